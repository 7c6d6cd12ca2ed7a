# densebench on a CUDA machine:
#   docker build -t densebench .
#   docker run --gpus all -v "$PWD:/work" densebench run --variant all --device cuda
# Same pins as pyproject.toml / constraints.txt (torch 2.14.1 CUDA 13 build, onnxruntime-gpu).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv git \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/densebench
COPY pyproject.toml constraints.txt README.md ./
COPY densebench ./densebench
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt .

ENV PATH=/opt/venv/bin:$PATH \
    DENSEBENCH_ARTIFACTS=/work/artifacts \
    DENSEBENCH_RUNS=/work/runs
WORKDIR /work
ENTRYPOINT ["densebench"]
CMD ["--help"]
