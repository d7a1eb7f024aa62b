# Sourced by the scripts beside it. step NAME COMMAND...: runs COMMAND (announced on stderr) and
# appends "NAME: seconds" to the file $TIMES (and to stderr).
step() {
    local name=$1 start=$SECONDS
    shift
    echo "== $name: $*" >&2
    "$@"
    echo "$name: $((SECONDS - start)) s" | tee -a "$TIMES" >&2
}
