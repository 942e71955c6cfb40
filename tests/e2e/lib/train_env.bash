# The training setup shared by train.sh, routing.sh and ecosystem.sh (sourced after harness.bash, with
# $moekit and $tmp set): a synthetic corpus under $tmp and train() with the common flags.
data="$tmp/data/synth"
common=(--set "data.train=[$data]" --set data.synth_tokens=300000 --set train.peak_flops=1e11)
train() { "$moekit" train "${common[@]}" "$@"; }
