#!/bin/sh
# Runs the fault-injection suite by hand (as root: it creates network namespaces).
#
#   tests/nemesis/run.sh                 # the short run: the fixed seed, then a random one
#   tests/nemesis/run.sh 3600            # an hour of faults per seed, then fuzzing
#   tests/nemesis/run.sh 600 4137079289  # ten minutes replaying one seed
#
# Needs iproute2 and nftables (apt-get install -y iproute2 nftables). Each run prints its
# seed, the faults as they end, and a summary; a run that finds anything keeps its node
# logs, history.txt and share under the /tmp/shir-nem-* directory it names.
set -eu
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] && export SHIR_NEMESIS_SECS="$1"
[ $# -ge 2 ] && export SHIR_NEMESIS_SEED="$2"
cargo test --test nemesis -- --nocapture
# A long run (one given a duration) ends with a few minutes of fuzzing too.
if [ $# -ge 1 ]; then
    PROPTEST_CASES="${PROPTEST_CASES:-50000}" cargo test --test fuzz
fi
