#!/usr/bin/env bash
# Builds Kefu's images from the repository root (what `make images` runs):
#   kefu-bot:VERSION            deploy/docker/Dockerfile.bot            (no torch)
#   kefu-llmcore:VERSION        deploy/docker/Dockerfile.llmcore        (torch's CPU build)
#   kefu-llmcore:VERSION-cuda   deploy/docker/Dockerfile.llmcore-cuda   (torch's CUDA build and its CUDA libraries)
#
#   deploy/scripts/images.sh [bot] [llmcore] [llmcore-cuda] [standins]   # default: all; prints each build's time and size
#
# standins: Debian's redis and nginx (deploy/standins/) for the compose file's redis and nginx where no registry serves
# the stock images; the default builds them only then.
#
# ENGINE: docker when a Docker daemon answers, else podman (.ci/install-podman installs it; the settings it needs
# here are in deploy/podman/containers.conf). PYTHON_IMAGE: the base of all three (default python:3.11-slim-bookworm;
# where no registry serves it, the local Debian base that deploy/scripts/base-image.sh makes, once).
# torch for the CPU image: TORCH_INDEX_URL (an index serving the CPU build) if set; otherwise, with podman, the wheel
# that this machine's pip gets for `pip install torch==TORCH_VERSION` (as `make install` does), downloaded once into
# build/wheels and mounted into the build as pip's find-links. TORCH_CUDA_INDEX_URL: the CUDA image's index (default:
# the default index, whose Linux torch is the CUDA build). PIP: the pip that downloads the wheel (default .venv/bin/pip).
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
TORCH_VERSION=${TORCH_VERSION:-$(sed -n 's/^TORCH_VERSION := //p' Makefile)}
DEFAULT_PYTHON_IMAGE=python:3.11-slim-bookworm
LOCAL_PYTHON_IMAGE=localhost/kefu-python:3.11-bookworm
PIP=${PIP:-.venv/bin/pip}
WHEELS=build/wheels
REDIS_STANDIN=localhost/kefu-standin-redis:7
NGINX_STANDIN=localhost/kefu-standin-nginx:1

if [ -z "${ENGINE:-}" ]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi
if [ "$ENGINE" = podman ]; then
    export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
    BUILD=(podman build --format docker)   # the docker format keeps HEALTHCHECK (OCI images have none)
else
    BUILD=(docker build)
fi

has_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

if [ -z "${PYTHON_IMAGE:-}" ]; then
    if has_image "$DEFAULT_PYTHON_IMAGE" || "$ENGINE" pull -q "$DEFAULT_PYTHON_IMAGE" >/dev/null 2>&1; then
        PYTHON_IMAGE=$DEFAULT_PYTHON_IMAGE
    else
        PYTHON_IMAGE=$LOCAL_PYTHON_IMAGE
        if ! has_image "$PYTHON_IMAGE"; then
            echo "no registry serves $DEFAULT_PYTHON_IMAGE: making $PYTHON_IMAGE (deploy/scripts/base-image.sh)"
            ENGINE=$ENGINE deploy/scripts/base-image.sh "$PYTHON_IMAGE"
        fi
    fi
fi
echo "engine $ENGINE, base $PYTHON_IMAGE, torch $TORCH_VERSION"

torch_wheel_args() {
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        echo "--build-arg=TORCH_INDEX_URL=$TORCH_INDEX_URL"
    elif [ "$ENGINE" = podman ]; then
        if ! compgen -G "$WHEELS/torch-$TORCH_VERSION*.whl" >/dev/null; then
            "$PIP" download --quiet --disable-pip-version-check --dest "$WHEELS" "torch==$TORCH_VERSION" >&2
        fi
        echo "--volume=$PWD/$WHEELS:/wheels:ro"
        echo "--build-arg=PIP_FIND_LINKS=/wheels"
    fi
}

build() {  # build NAME DOCKERFILE TAG [ARGS...]
    local name=$1 dockerfile=$2 tag=$3 start size
    shift 3
    start=$(date +%s)
    "${BUILD[@]}" "$@" \
        -f "$dockerfile" -t "$tag" .
    size=$("$ENGINE" image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')
    summary+=("$name: $tag built in $(( $(date +%s) - start )) s, $size")
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(bot llmcore llmcore-cuda)
    # the compose file's redis and nginx: stock images where a registry serves them, else stand-ins
    while read -r stock; do
        if ! has_image "$stock" && ! "$ENGINE" pull -q "$stock" >/dev/null 2>&1; then targets+=(standins); break; fi
    done < <(sed -n 's/^    image: \(redis:.*\|nginx:.*\)$/\1/p' deploy/docker-compose.yml)
fi
summary=()
for target in "${targets[@]}"; do
    case $target in
        bot) build bot deploy/docker/Dockerfile.bot "kefu-bot:$VERSION" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" ;;
        llmcore)
            mapfile -t extra < <(torch_wheel_args)
            build llmcore deploy/docker/Dockerfile.llmcore "kefu-llmcore:$VERSION" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
                --build-arg "TORCH_VERSION=$TORCH_VERSION" "${extra[@]}" ;;
        llmcore-cuda)
            extra=()
            [ -z "${TORCH_CUDA_INDEX_URL:-}" ] || extra=("--build-arg=TORCH_INDEX_URL=$TORCH_CUDA_INDEX_URL")
            build llmcore-cuda deploy/docker/Dockerfile.llmcore-cuda "kefu-llmcore:$VERSION-cuda" \
                --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "TORCH_VERSION=$TORCH_VERSION" "${extra[@]}" ;;
        standins)  # Debian's redis and nginx standing in for the stock images, where no registry serves those
            build redis-standin deploy/standins/Dockerfile.redis "$REDIS_STANDIN" --build-arg "BASE_IMAGE=$PYTHON_IMAGE"
            build nginx-standin deploy/standins/Dockerfile.nginx "$NGINX_STANDIN" --build-arg "BASE_IMAGE=$PYTHON_IMAGE" ;;
        *) echo "unknown image $target (bot, llmcore, llmcore-cuda, standins)" >&2; exit 2 ;;
    esac
done
printf '%s\n' "${summary[@]}"
