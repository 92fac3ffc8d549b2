// A stand-alone driver for the kernel, for running it where Python is not at hand: under
// qemu-aarch64, or as a Windows .exe built with MinGW (bench/cross_builds.sh). It is linked with
// the level objects, csrc/extrapolate_<level>.cpp each compiled with its flags from setup.py
// (aarch64: the generic one only; x86-64: generic, avx2 and avx512).
//
//     kernel_driver DIR [LEVEL]   # every case of DIR/manifest.txt (bench/kernel_digests.py --dump)
//
// LEVEL: baseline (the default), or on x86-64 avx2 / avx512, which the caller must know the CPU
// runs. Each manifest line: dpo_fmt sft_fmt out_fmt alpha(hex) n dpo_file sft_file out_file,
// formats 0 BF16, 1 F16, 2 F32. The driver reads the inputs and overwrites out_file with its own
// output.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../csrc/extrapolate.h"

namespace {

struct Level {
  const char* name;
  expo::Kernel run;
};

// The levels extrapolate.cpp dispatches to on this target, and no others.
const Level kLevels[] = {
#if defined(__x86_64__) || defined(_M_X64)
    {"avx512", expo::run_avx512},
    {"avx2", expo::run_avx2},
#endif
    {"baseline", expo::run_baseline},
};

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
  const Level* level = nullptr;
  const char* name = argc == 3 ? argv[2] : "baseline";
  for (const Level& l : kLevels) {
    if (std::strcmp(l.name, name) == 0) level = &l;
  }
  if ((argc != 2 && argc != 3) || level == nullptr) {
    std::fprintf(stderr, "usage: %s DIR [LEVEL] (with DIR/manifest.txt); levels:", argv[0]);
    for (const Level& l : kLevels) std::fprintf(stderr, " %s", l.name);
    std::fprintf(stderr, "\n");
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
    level->run(d.data(), dc, s.data(), sc, out.data(), oc, n, alpha);
    FILE* f = std::fopen((dir + "/" + oname).c_str(), "wb");
    if (!f || std::fwrite(out.data(), 1, out.size(), f) != out.size()) {
      std::fprintf(stderr, "%s: cannot write\n", oname);
      return 1;
    }
    std::fclose(f);
    ++cases;
  }
  std::fclose(manifest);
  std::printf("%d cases run (%s)\n", cases, level->name);
  return 0;
}
