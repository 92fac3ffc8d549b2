// A stand-alone driver for the kernel's baseline level (csrc/extrapolate_simd.h at 16-byte
// registers: NEON on aarch64, SSE2 on x86-64), for running it where Python is not at hand, e.g.
// under qemu-aarch64 (bench/aarch64_crosscheck.sh).
//
//     kernel_driver DIR     # runs every case of DIR/manifest.txt (bench/kernel_digests.py --dump)
//
// Each manifest line: dpo_fmt sft_fmt out_fmt alpha(hex) n dpo_file sft_file out_file, formats
// 0 BF16, 1 F16, 2 F32. The driver reads the inputs and overwrites out_file with its own output.
#define EXPO_VBYTES 16
#define EXPO_RUN run_baseline
#define EXPO_PLAIN plain_baseline
#include "../csrc/extrapolate_simd.h"

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

std::vector<unsigned char> read_file(const std::string& path) {
  std::vector<unsigned char> data;
  if (FILE* f = std::fopen(path.c_str(), "rb")) {
    unsigned char buf[1 << 16];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + got);
    std::fclose(f);
  }
  return data;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR (with DIR/manifest.txt)\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  FILE* manifest = std::fopen((dir + "/manifest.txt").c_str(), "r");
  if (!manifest) {
    std::fprintf(stderr, "%s/manifest.txt: cannot open\n", argv[1]);
    return 2;
  }
  const int sizes[3] = {2, 2, 4};
  int dc, sc, oc, cases = 0;
  char alpha_text[64], dname[256], sname[256], oname[256];
  long n;
  while (std::fscanf(manifest, "%d %d %d %63s %ld %255s %255s %255s", &dc, &sc, &oc, alpha_text,
                     &n, dname, sname, oname) == 8) {
    double alpha = std::strtod(alpha_text, nullptr);  // hex float: exact
    std::vector<unsigned char> d = read_file(dir + "/" + dname), s = read_file(dir + "/" + sname);
    if (d.size() != size_t(n) * sizes[dc] || s.size() != size_t(n) * sizes[sc]) {
      std::fprintf(stderr, "%s: inputs have the wrong size\n", oname);
      return 1;
    }
    std::vector<unsigned char> out(size_t(n) * sizes[oc]);
    expo::run_baseline(d.data(), dc, s.data(), sc, out.data(), oc, n, alpha);
    FILE* f = std::fopen((dir + "/" + oname).c_str(), "wb");
    if (!f || std::fwrite(out.data(), 1, out.size(), f) != out.size()) {
      std::fprintf(stderr, "%s: cannot write\n", oname);
      return 1;
    }
    std::fclose(f);
    ++cases;
  }
  std::fclose(manifest);
  std::printf("%d cases run\n", cases);
  return 0;
}
