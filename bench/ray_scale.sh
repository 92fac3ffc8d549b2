#!/bin/bash
# The merge on a 2-node local Ray cluster (`ray start` twice on this machine) against the threaded
# executor on the same machine, cold page cache, plus the disk floor: bench/SCALE.md's figures.
#
#   sudo bench/ray_scale.sh /tmp/rbench/pair [MODEL_SHARD_SIZE] [RUNS]
#
# PAIR holds sft/ and dpo/ (python bench/checkpoints.py llama-0.5b /tmp/rbench/pair). Root: it
# drops the page cache. Both Ray nodes share this machine's cores and disk, so on a small machine
# this measures the executor's overhead, not a speed-up. It ends with `ray stop --force`, which
# stops every Ray process on the machine: run it where no other Ray runs.
set -euo pipefail
pair=$(realpath "$1"); shard=${2:-200MB}; runs=${3:-3}
py=${PYTHON:-python}; ray=$(dirname "$(command -v "$py")")/ray
work=$(dirname "$pair")/ray-scale; rm -rf "$work"; mkdir -p "$work"; cd "$work"
cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
merge() { "$py" -m expo_stream.cli merge --sft "$pair/sft" --dpo "$pair/dpo" --out "$1" --alpha 0.3 \
          --max-shard-size "$shard" --quiet "${@:2}"; }

cold; t=$(now); cat "$pair"/sft/*.safetensors "$pair"/dpo/*.safetensors > /dev/null; r=$(echo "$(now) - $t" | bc)
out=$(du -cb "$pair"/dpo/*.safetensors | tail -1 | cut -f1)
cold; t=$(now); dd if=/dev/zero of=floor.bin bs=16M count=$((out / 16777216)) conv=fdatasync status=none
w=$(echo "$(now) - $t" | bc); rm floor.bin
echo "disk floor: read both inputs ${r}s, write the output ${w}s"

"$ray" start --head --port 6390 --num-cpus 1 --object-store-memory 100000000 \
    --include-dashboard false --temp-dir /tmp/ray-scale --disable-usage-stats > /dev/null 2>&1
trap '"$ray" stop --force > /dev/null 2>&1' EXIT
"$ray" start --address 127.0.0.1:6390 --num-cpus 1 --object-store-memory 100000000 \
    --disable-usage-stats > /dev/null
for i in $(seq "$runs"); do
  for how in threads ray; do
    rm -rf out; cold; t=$(now)
    if [ $how = ray ]; then merge out --threads 2 --executor ray --ray-address 127.0.0.1:6390
    else merge out --threads 2; fi | grep merged
    echo "$how run $i: $(echo "$(now) - $t" | bc) s wall"
    (cd out && find . -type f | sort | xargs sha256sum) > $how.sha
  done
  cmp threads.sha ray.sha && echo "run $i: every file's sha256 identical"
done
