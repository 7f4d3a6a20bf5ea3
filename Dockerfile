# syntax=docker/dockerfile:1
# The GPU worker image: a Temporal worker that runs generation on the CUDA
# backend of the native engine.
#
#   docker build -t specontext-worker .
#   docker run --gpus all -v $PWD/models:/models:ro \
#     -e SPECONTEXT_TEMPORAL_ADDRESS=temporal:7233 -e SPECONTEXT_NATS_URL=nats://nats:4222 \
#     specontext-worker
#
# Stage 1 (CUDA devel) builds the Node-API addon with cmake-js and nvcc, the
# same command as `npm run build:native` plus the CUDA switches, and compiles
# the TypeScript. Stage 2 (CUDA runtime: cudart and cuBLAS, no compiler)
# carries only what the worker runs. Models are not baked in: mount a
# converted checkpoint (make setup writes models/smollm2-135m-instruct).
ARG CUDA_VERSION=13.0.1
ARG NODE_VERSION=20

# Node 20 for both stages: its official build runs on Ubuntu 24.04's glibc.
FROM node:${NODE_VERSION}-bookworm-slim AS node

FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/npm
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && apt-get update \
 && apt-get install -y --no-install-recommends cmake ninja-build g++ make python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app

COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund

# The addon: CUDA backend for sm_90 (H100/H200), found through the image's
# nvcc. The CPU kernels target generic x86-64 (no -march=native): the image
# runs on other machines than the one that built it. No tests in the image.
COPY native native
RUN npx cmake-js compile -d native -O build --parallel "$(nproc)" \
      --CDSPX_BUILD_TESTS=OFF --CDSPX_CUDA=ON --CDSPX_NATIVE_ARCH=OFF \
      --CDCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc \
 && test -f build/Release/specontext_native.node

COPY . .
RUN npx tsc -p tsconfig.json && npm prune --omit=dev

FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS runtime
COPY --from=node /usr/local/bin/node /usr/local/bin/node
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/bin bin
COPY --from=build /app/dist dist
COPY --from=build /app/build/Release/specontext_native.node build/Release/specontext_native.node
ENV NODE_ENV=production \
    SPECONTEXT_DEVICE=cuda:0 \
    SPECONTEXT_MODEL=/models/smollm2-135m-instruct \
    SPECONTEXT_DATA_DIR=/data
RUN mkdir -p /data && chown ubuntu:ubuntu /data
VOLUME ["/models", "/data"]
USER ubuntu
ENTRYPOINT ["node", "bin/specontext.js"]
CMD ["worker", "--device", "cuda:0"]
