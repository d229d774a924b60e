#!/usr/bin/env bash
# Fuzzing: builds fuzz/ (libFuzzer through libfuzzer-sys) with the stable toolchain and the
# SanitizerCoverage flags cargo-fuzz passes (not AddressSanitizer, which needs nightly; our
# crates forbid unsafe code), then runs each target for SECONDS (default 20) from its
# checked-in corpus under fuzz/corpus/<target>/. A crash fails the run and leaves its input in
# fuzz/artifacts/<target>/: fix the cause, then check the input in under fuzz/corpus/<target>/
# as a regression input. Usage: infra/fuzz.sh [SECONDS] [TARGET…]
# The build is cached outside the checkout (~/.cache/sharedcare/fuzz-target).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
seconds="${1:-20}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^sharedcare-fuzz$')
fi
target_dir="${XDG_CACHE_HOME:-$HOME/.cache}/sharedcare/fuzz-target"
host="$(rustc -vV | sed -n 's/^host: //p')"
# --target: the flags then apply to the fuzzed code only, not to build scripts and macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
export CARGO_INCREMENTAL=0
echo "fuzz: building ${#targets[@]} targets" >&2
cargo build --locked --release --manifest-path fuzz/Cargo.toml --target "$host" --target-dir "$target_dir" --bins >&2
failed=0
for t in "${targets[@]}"; do
  work="$(mktemp -d)"
  cp fuzz/corpus/"$t"/* "$work"/
  mkdir -p fuzz/artifacts/"$t"
  log="$work.log"
  if "$target_dir/$host/release/$t" "$work" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -max_len=65536 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1; then
    runs="$(sed -n 's/^Done \([0-9]*\) runs in.*/\1/p' "$log" | tail -1)"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1)"
    echo "fuzz: $t: ${runs:-?} inputs in ${seconds} s, no crash ($cov, corpus grew to $(ls "$work" | wc -l))"
  else
    echo "fuzz: $t: CRASH (input kept in fuzz/artifacts/$t/):" >&2
    grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" | head -20 >&2
    failed=1
  fi
  rm -rf "$work" "$log"
done
exit "$failed"
