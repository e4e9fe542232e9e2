#!/usr/bin/env bash
# benchmarks/gpu_lm_check.py on a GPU machine without network, from the repository root:
#     bash benchmarks/gpu_lm_check.sh OUT_DIR [extra gpu_lm_check.py arguments]
# SITE_TAR (.gpu/site.tar.xz): site-packages with ray, mlflow, pydantic... for the machine's python3 (see
# /work/shared/gpu/README.md), untarred to /tmp/site and put on PYTHONPATH; skipped when the file is absent.
set -u
OUT=${1:?usage: gpu_lm_check.sh OUT_DIR [args]}; shift
PY=${PY:-python3} SITE_TAR=${SITE_TAR:-.gpu/site.tar.xz}
mkdir -p "$OUT"
T0=$(date +%s)
if [ -f "$SITE_TAR" ]; then
  rm -rf /tmp/site && mkdir -p /tmp/site && tar -xJf "$SITE_TAR" -C /tmp/site || echo "UNTAR FAILED"
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 MPLBACKEND=Agg
echo "== untar $(( $(date +%s) - T0 ))s; $(nproc) CPUs; PYTHONPATH=$PYTHONPATH"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'EOF' 2>&1 | tee "$OUT/env.txt"
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| cuda available", torch.cuda.is_available(), "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
import ray, mlflow, pydantic, raykd, raykd.tune  # noqa
print("imports ok: ray", ray.__version__, "mlflow", mlflow.__version__, "pydantic", pydantic.__version__)
EOF
"$PY" benchmarks/gpu_lm_check.py --out "$OUT" "$@"
RC=$?
echo "== gpu_lm_check exit $RC after $(( $(date +%s) - T0 ))s"
exit $RC
