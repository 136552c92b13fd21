# shellcheck shell=bash
# Small helpers shared by cluster.sh and build.sh: progress output, deadlines, pid files.

SLUICE_T0="${SLUICE_T0:-$(date +%s)}"

log() { printf '[%4ss] %s\n' "$(($(date +%s) - SLUICE_T0))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Prints the last lines of a log file, indented, so a failure says why at a glance.
show_log_tail() {
  local file="$1" lines="${2:-25}"
  if [[ -s "${file}" ]]; then
    log "last ${lines} lines of ${file}:"
    tail -n "${lines}" "${file}" | sed 's/^/    | /' >&2
  else
    log "(log ${file} is empty or missing)"
  fi
}

# fail_component NAME LOG MESSAGE: the single way a step reports failure.
fail_component() {
  local name="$1" file="$2"
  shift 2
  log "FAILED: ${name}: $*"
  show_log_tail "${file}"
  die "${name} failed; full log: ${file}"
}

# wait_until NAME LOG DEADLINE_SECONDS CMD...: polls CMD once a second until it succeeds.
# A pid file given in WAIT_PIDFILE makes the wait fail fast when that process dies.
wait_until() {
  local name="$1" file="$2" deadline="$3"
  shift 3
  local start now
  start=$(date +%s)
  while true; do
    if "$@" >/dev/null 2>&1; then
      log "${name} is ready ($(($(date +%s) - start))s)"
      return 0
    fi
    if [[ -n "${WAIT_PIDFILE:-}" ]] && ! pid_alive "${WAIT_PIDFILE}"; then
      fail_component "${name}" "${file}" "process exited while waiting for readiness"
    fi
    now=$(date +%s)
    if ((now - start >= deadline)); then
      fail_component "${name}" "${file}" "not ready after ${deadline}s (check: $*)"
    fi
    sleep 1
  done
}

# pid_alive PIDFILE [EXPECTED_EXE_SUBSTRING]: true when the pid file names a live process
# that is still the one we started (guards against pid reuse after a reboot or crash).
pid_alive() {
  local pidfile="$1" pid
  [[ -s "${pidfile}" ]] || return 1
  pid=$(<"${pidfile}")
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/${pid}/cmdline" ]] || return 1
  local expected
  expected=$(cat "${pidfile}.cmd" 2>/dev/null || true)
  if [[ -n "${expected}" ]]; then
    tr '\0' ' ' <"/proc/${pid}/cmdline" | grep -qF -- "${expected}" || return 1
  fi
  # A zombie is not alive.
  [[ "$(awk '{print $3}' "/proc/${pid}/stat" 2>/dev/null)" != "Z" ]]
}

# start_daemon NAME PIDFILE LOGFILE CMD...: starts CMD detached in its own session, records
# its pid (the pid of CMD itself, via exec) and its command line, appends output to LOGFILE.
start_daemon() {
  local name="$1" pidfile="$2" logfile="$3"
  shift 3
  mkdir -p "$(dirname "${pidfile}")" "$(dirname "${logfile}")"
  printf '\n===== %s starting %s =====\n' "$(date -u +%FT%TZ)" "${name}" >>"${logfile}"
  printf '%s ' "$@" >"${pidfile}.cmd"
  rm -f "${pidfile}"
  # The daemon gets no descriptor but stdin/out/err: one inherited from the caller would be
  # held for the daemon's whole life. `flock /var/tmp/sluice-cluster.lock cluster.sh up` left
  # every daemon holding the cluster lock, so nobody could take it until `down`.
  # shellcheck disable=SC2016 # $$, $fd and $@ belong to the inner shell.
  setsid bash -c 'echo $$ >"$0"
    for fd in /proc/$$/fd/*; do
      fd=${fd##*/}
      if ((fd > 2)); then eval "exec ${fd}>&-" 2>/dev/null; fi
    done
    exec "$@"' "${pidfile}" "$@" >>"${logfile}" 2>&1 </dev/null &
  local waited=0
  until [[ -s "${pidfile}" ]]; do
    sleep 0.1
    waited=$((waited + 1))
    ((waited < 50)) || fail_component "${name}" "${logfile}" "did not start"
  done
  log "started ${name} (pid $(<"${pidfile}"), log ${logfile})"
}

# stop_daemon NAME PIDFILE: TERM, wait up to 20s, then KILL; only ever the recorded pid.
stop_daemon() {
  local name="$1" pidfile="$2" pid i
  if ! pid_alive "${pidfile}"; then
    rm -f "${pidfile}" "${pidfile}.cmd"
    return 0
  fi
  pid=$(<"${pidfile}")
  kill -TERM "${pid}" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    pid_alive "${pidfile}" || break
    sleep 0.1
  done
  if pid_alive "${pidfile}"; then
    log "${name} (pid ${pid}) ignored SIGTERM for 20s; sending SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    sleep 0.5
  fi
  log "stopped ${name} (pid ${pid})"
  rm -f "${pidfile}" "${pidfile}.cmd"
}

# shellcheck disable=SC2016 # $0 and $1 belong to the inner shell.
tcp_open() { timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

# run_with_progress NAME LOG DEADLINE CMD...: runs a long step (a build) in the background,
# printing a heartbeat every 30s with the last line it logged (e.g. the package being compiled).
run_with_progress() {
  local name="$1" file="$2" deadline="$3"
  shift 3
  local start pid status=0 last now
  start=$(date +%s)
  last=${start}
  "$@" >>"${file}" 2>&1 &
  pid=$!
  while kill -0 "${pid}" 2>/dev/null; do
    sleep 2
    now=$(date +%s)
    if ((now - start >= deadline)); then
      kill -TERM "${pid}" 2>/dev/null || true
      wait "${pid}" 2>/dev/null || true
      fail_component "${name}" "${file}" "did not finish within ${deadline}s"
    fi
    if ((now - last >= 30)); then
      last=${now}
      log "  ${name}: $((now - start))s elapsed; last log line: $(tail -n 1 "${file}" | cut -c1-100)"
    fi
  done
  wait "${pid}" || status=$?
  ((status == 0)) || fail_component "${name}" "${file}" "exited with status ${status}"
  log "${name} done in $(($(date +%s) - start))s"
}

# s3_request METHOD PATH [CURL ARGS...]: a request to the cluster's S3 gateway, signed with
# SigV4 (curl --aws-sigv4) with the static test credentials of versions.sh, so it goes through
# the gateway's authentication like any client's. Fails on an HTTP error.
S3_URL="http://127.0.0.1:${SLUICE_S3_PORT}"
s3_request() {
  local method="$1" path="$2"
  shift 2
  local verb=(-X "${method}")
  [[ "${method}" != HEAD ]] || verb=(--head) # -X HEAD would wait for a body
  # curl 7.88 signs no x-amz-content-sha256 header; without one SeaweedFS refuses a request
  # with a body (SignatureDoesNotMatch). Given, it is signed too.
  curl -sf --max-time 10 "${verb[@]}" --aws-sigv4 "aws:amz:${SLUICE_S3_REGION}:s3" \
    --user "${SLUICE_S3_ACCESS_KEY_ID}:${SLUICE_S3_SECRET_ACCESS_KEY}" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" "${S3_URL}${path}"
}
