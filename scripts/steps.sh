# Sourced by the scripts beside it. step NAME COMMAND...: runs COMMAND (announced on stderr),
# appends "NAME: seconds" to the file $TIMES (and to stderr), with "(failed: exit N)" where it
# failed, and returns COMMAND's status (under set -e a failed step ends the script, unless the
# caller writes `step ... || ...`).
step() {
    local name=$1 start=$SECONDS status=0
    shift
    echo "== $name: $*" >&2
    "$@" || status=$?
    echo "$name: $((SECONDS - start)) s$([ "$status" = 0 ] || echo " (failed: exit $status)")" | tee -a "$TIMES" >&2
    return "$status"
}
