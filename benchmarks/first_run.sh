#!/usr/bin/env bash
# First start of the hub on a fresh machine: `python app.py` with an empty FMHUB_HOME, timed until HTTP 200 on `/`
# and until each embedded default is fine-tuned and cached (the app trains them one after another in the background).
#   bash benchmarks/first_run.sh [PORT]        # ~15 minutes on 2 CPU cores; nothing else should be running
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:-7871}
export FMHUB_HOME=$(mktemp -d /tmp/fmhub-first-run-XXXX) HF_HUB_OFFLINE=1
start=$(date +%s.%N)
elapsed() { python3 -c "print(round($(date +%s.%N) - $start, 1))"; }
python3 app.py --port "$port" > "$FMHUB_HOME/app.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
ready=""
declare -A cached=()
done_count=0
while [ "$done_count" -lt 3 ]; do
  kill -0 $pid 2>/dev/null || { echo "the app exited; log: $FMHUB_HOME/app.log"; exit 1; }
  if [ -z "$ready" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" = 200 ]; then
    ready=1; echo "HTTP 200 on / after $(elapsed) s"
  fi
  for s in customer-service medical-image voice-command; do
    if [ -z "${cached[$s]:-}" ] && [ -f "$FMHUB_HOME/models/$s/fmhub.json" ]; then
      cached[$s]=1; done_count=$((done_count + 1)); echo "$s fine-tuned and cached after $(elapsed) s"
    fi
  done
  sleep 3
done
echo "all three embedded defaults ready after $(elapsed) s (FMHUB_HOME=$FMHUB_HOME, log in app.log)"
