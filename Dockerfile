# afl on CPU. Build: docker build -t afl:cpu .
# Run the demo:     docker run --rm -v $PWD/runs:/app/runs afl:cpu
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      dataset-fashion-mnist && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt install.sh ./
RUN ./install.sh
COPY . .
CMD [".venv/bin/python", "launch.py", "--config", "configs/fmnist_hybrid.py", \
     "--workdir", "runs/fmnist_hybrid", "--overwrite"]
