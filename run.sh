#!/usr/bin/env bash
# Set up (once, and again whenever the requirement files change) and run the project.
#   ./run.sh app     set up, then serve the dashboard on http://localhost:8501
#   ./run.sh test    set up, then run the test suite
#   ./run.sh setup   set up only
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.requirements.sha"
  local want
  want=$(cat requirements.txt requirements-data.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r requirements.txt
    "$VENV/bin/python" -m pip install --quiet --no-deps -r requirements-data.txt
    echo "$want" > "$stamp"
  fi
}

export HF_HUB_DISABLE_TELEMETRY=1
case "${1:-app}" in
  setup) setup ;;
  app)
    setup
    exec "$VENV/bin/python" -m streamlit run streamlit_app.py --server.address "${SHEDDER_ADDRESS:-127.0.0.1}" \
      --server.port "${SHEDDER_PORT:-8501}" --server.headless true --browser.gatherUsageStats false \
      --client.toolbarMode minimal --server.fileWatcherType none ;;
  test)
    setup
    shift
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 exec "$VENV/bin/python" -m pytest -q tests "$@" ;;
  *) echo "usage: ./run.sh [app|test|setup]" >&2; exit 2 ;;
esac
