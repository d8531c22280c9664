# Sourced by the scripts that train runs: run a training command once per run directory,
# so that rerunning a script after a crash or an interruption loses nothing.
#   once OUT CMD...: a finished run (OUT/metrics.json) is kept; an unfinished one
#   (OUT/config.json, written before its first epoch) resumes: CMD --resume; else CMD.
once() {
  local out=$1
  shift
  if [[ -f "$out/metrics.json" ]]; then return 0; fi
  if [[ -f "$out/config.json" ]]; then "$@" --resume; else "$@"; fi
}

# wait_all PID...: wait for every background job, then fail if one failed (under `set -e`
# the script stops), which a bare `wait` hides: it returns 0 whatever its jobs returned.
# All are waited for first, so no job is left running after the script has stopped.
wait_all() {
  local pid rc=0
  for pid in "$@"; do wait "$pid" || rc=$?; done
  return "$rc"
}
