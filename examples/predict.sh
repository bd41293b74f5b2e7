#!/usr/bin/env bash
# The KServe V1 routes of the rayspace Serve application, with curl.
#
#   examples/predict.sh                         # http://127.0.0.1:8000 (rayspace serve, or a local head's job)
#   examples/predict.sh http://127.0.0.1:8000   # KubeRay, after:
#       kubectl -n rayspace port-forward svc/rayspace-serve-serve-svc 8000:8000
#
# Environment: RAYSPACE_SERVE_URL (instead of the argument), RAYSPACE_MODEL (default wdbc).
set -euo pipefail

URL="${1:-${RAYSPACE_SERVE_URL:-http://127.0.0.1:8000}}"
URL="${URL%/}"
MODEL="${RAYSPACE_MODEL:-wdbc}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

echo "# liveness and the served version"
curl --fail-with-body -sS "$URL/healthz"; echo
echo "# served models"
curl --fail-with-body -sS "$URL/v1/models"; echo
echo "# readiness and metadata of $MODEL (feature names, metrics)"
curl --fail-with-body -sS "$URL/v1/models/$MODEL"; echo
echo "# predict: two WDBC patients (the first malignant, the second benign)"
curl --fail-with-body -sS -X POST -H 'Content-Type: application/json' \
  --data @"$HERE/instances.json" "$URL/v1/models/$MODEL:predict"; echo
echo "# a bad request is answered 4xx with the reason"
curl -sS -w '\nHTTP %{http_code}\n' -X POST -H 'Content-Type: application/json' \
  --data '{"instances": [[1.0, 2.0, 3.0]]}' "$URL/v1/models/$MODEL:predict"
