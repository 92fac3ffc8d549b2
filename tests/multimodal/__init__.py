"""Multimodal DDPO tests. The seed script's bugs (issue 7) and the tests that pin each one:

- autocast called without a device type: test_model.py::test_autocast_names_its_device,
  test_train.py::test_autocast_precision_is_what_the_matmuls_run_in
- projection sized 768 but fed 512-d features:
  test_ddpo.py::test_projector_is_sized_from_the_vision_width,
  test_model.py::test_compose_copies_both_towers_exactly
- GradScaler on fp16 weights: test_train.py::test_fp16_keeps_fp32_master_weights
- log-probs gathered off by one: test_ddpo.py::test_token_logps_are_next_token_logprobs,
  test_ddpo.py::test_sum_score_is_the_sequence_logprob_from_prefixes
- padding in the middle of the sequence: test_ddpo.py::test_response_tokens_and_weights_line_up,
  test_ddpo.py::test_padding_does_not_change_a_score
- BOS inside responses: test_ddpo.py::test_response_tokens_and_weights_line_up
- projection never trained or saved: test_train.py::test_inference_loads_the_saved_projector_bit_for_bit
- segment masks always None (γ never applied): test_ddpo.py::test_response_tokens_and_weights_line_up,
  test_ddpo.py::test_gamma_weights_the_corrected_tokens, test_segments.py
"""
