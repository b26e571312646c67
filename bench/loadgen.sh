# loadgen.sh, sourced by the bench scripts: sets LG to a load generator,
# $LOADGEN if given, else one built from BENCH/loadgen (BENCH defaults to
# ../shared/bench beside the repository) into the work directory $W.
LG=${LOADGEN:-}
if [[ -z $LG ]]; then
  BENCH=${BENCH:-$(dirname "$0")/../../shared/bench}
  (cd "$BENCH" && go build -o "$W/loadgen" ./loadgen)
  LG=$W/loadgen
fi
