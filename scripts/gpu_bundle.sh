#!/usr/bin/env bash
# gpu_bundle.sh - what a GPU machine needs to run this repository's programs without building
# them or installing packages there (no compiler run, no package registry reachable).
#
#   scripts/gpu_bundle.sh [make] [--no-build]     HERE, before a device session:
#     1. builds the programs with CUDA (sm_80/sm_90) for a portable x86-64 CPU (ARCH, default
#        -march=x86-64-v3: AVX2, which every H100/H200 host has; the default build uses
#        -march=native, whose instructions the device's CPU may lack) in BUILD_GPU (default
#        build-gpu/, must be git-ignored, else the device copy would take it along);
#     2. copies the programs the GPU scripts run (detr-*, bench/bench_train, the tests with GPU
#        checks), without debug sections, to .gpu-deps/build/;
#     3. finds the shared libraries they need (ldd) and the Debian packages holding them,
#        `apt-get download`s those and `dpkg -x`es them into .gpu-deps/ (never over /), keeping
#        only the libraries needed;
#     4. checks the bundle (every needed library present, the bundle's own dependencies met)
#        and the size of what the device copy carries (working tree + carried paths <= 64 MiB);
#     5. prints the carry list and the device commands.
#   scripts/gpu_bundle.sh env [--ld-path]         ON THE DEVICE (gpu_check.sh and gpu_bench.py
#     call it): makes the libraries resolvable and prints `export LD_LIBRARY_PATH=...` (for
#     eval), or with --ld-path the value alone. Only libraries the machine does not have are
#     taken from the bundle (symlinked into .gpu-deps/active/), so nothing shadows the system's
#     own (Python's sqlite3 module, for one, keeps the system libsqlite3). CUDA libraries the
#     loader cannot find (cuDNN, NCCL, ... ) are looked for in the CUDA toolkit folders and in
#     the NVIDIA wheels of the Python installation that has torch (site-packages/nvidia/*/lib),
#     and their folders are added. Exit 1, with the reasons on stderr, when a library is still
#     missing or the C library is too old.
#
# Not bundled, assumed present on any machine that runs PyTorch on a GPU: the C library (libc,
# libm, libdl, librt, libpthread, libutil, the loader), libstdc++ and libgcc_s (Python and torch
# need them), zlib (Python's zlib module), the NVIDIA driver (libcuda), and the CUDA libraries
# (libcudart, libcublas, libcublasLt, libcupti, libcudnn, libnccl: from the toolkit or PyTorch's
# NVIDIA wheels; Debian's archive does not have them). Bundled: everything else the programs
# link, e.g. OpenBLAS (with libgfortran, libquadmath), libgomp (PyTorch ships its own renamed
# copy, so a system libgomp.so.1 is not guaranteed), libuv, libjansson, libsqlite3,
# libturbojpeg, libspng, libhttp_parser.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
DEPS=${GPU_DEPS_DIR:-.gpu-deps}
CARRY_LIMIT=$((64 * 1024 * 1024))
EXCLUDE_RE='^(linux-vdso|ld-linux(-x86-64)?|libc|libm|libmvec|libdl|librt|libpthread|libutil|libresolv|libstdc\+\+|libgcc_s|libz|libcuda|libcudart|libcublas|libcublasLt|libcudnn[A-Za-z_]*|libcupti|libnccl|libnvrtc|libnvJitLink|libnvToolsExt)\.so(\.[0-9]+)*$'

say() { echo "gpu_bundle: $*" >&2; }

# ---- device side -------------------------------------------------------------------------------

# Folders that may hold CUDA libraries: the toolkit's, then the NVIDIA wheels (and torch/lib) of
# every site-packages of the Python that has torch. GPU_BUNDLE_LIB_ROOTS (colon-separated) adds
# folders (tests).
cuda_search_dirs() {
    local d py extra
    IFS=: read -r -a extra <<<"${GPU_BUNDLE_LIB_ROOTS:-}"
    for d in "${extra[@]}"; do [ -n "$d" ] && echo "$d"; done
    for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
             /usr/local/cuda/extras/CUPTI/lib64 /usr/local/cuda-*/lib64 \
             /usr/local/cuda-*/targets/x86_64-linux/lib /usr/local/cuda-*/extras/CUPTI/lib64 \
             /usr/lib/x86_64-linux-gnu /usr/lib64; do
        [ -d "$d" ] && echo "$d"
    done
    for py in "${PY:-}" python3 /usr/bin/python3; do
        if [ -z "$py" ] || ! command -v "$py" >/dev/null 2>&1; then continue; fi
        # find_spec locates torch without importing it (fast)
        "$py" - <<'EOF' 2>/dev/null
import importlib.util, os, site, sys
roots = []
spec = importlib.util.find_spec("torch")
if spec and spec.origin:
    roots.append(os.path.dirname(os.path.dirname(spec.origin)))
try:
    roots += site.getsitepackages()
except AttributeError:
    pass
roots += [p for p in sys.path if p.endswith("-packages")]
seen = set()
for r in roots:
    if r in seen or not os.path.isdir(r):
        continue
    seen.add(r)
    nv = os.path.join(r, "nvidia")
    if os.path.isdir(nv):
        for name in sorted(os.listdir(nv)):
            for sub in ("lib", "lib64"):
                d = os.path.join(nv, name, sub)
                if os.path.isdir(d):
                    print(d)
    if os.path.isdir(os.path.join(r, "torch", "lib")):
        print(os.path.join(r, "torch", "lib"))
EOF
    done
}

# The folder (of cuda_search_dirs) holding the file $1, or nothing.
find_cuda_dir() {
    local d
    while read -r d; do
        if [ -e "$d/$1" ]; then echo "$d"; return 0; fi
    done < <(cuda_search_dirs | awk '!seen[$0]++')
    return 1
}

cmd_env() {
    local print_path_only=0
    [ "${1:-}" = --ld-path ] && print_path_only=1
    local deps
    deps=$(cd "$DEPS" 2>/dev/null && pwd) || { say "no $DEPS folder here: run scripts/gpu_bundle.sh on the build machine and carry $DEPS"; return 1; }
    local active=$deps/active bins=()
    find "$deps/build" -type f -exec chmod u+x {} + 2>/dev/null # in case the copy lost the modes
    rm -rf "$active"
    mkdir -p "$active" || { say "cannot create $active"; return 1; }
    while IFS= read -r -d '' f; do bins+=("$f"); done < <(find "$deps/build" -type f -perm -u+x -print0 2>/dev/null)
    [ ${#bins[@]} -gt 0 ] || { say "no programs in $deps/build (run scripts/gpu_bundle.sh)"; return 1; }
    local base=${LD_LIBRARY_PATH:-} path=$active dirs_added="" notes="" unresolved=""
    local so f d missing progress
    for _ in 1 2 3 4 5 6; do # each round resolves one more level of dependencies
        missing=$(LD_LIBRARY_PATH="$path${base:+:$base}" ldd "${bins[@]}" 2>/dev/null |
                  awk '/=> not found/ { print $1 }' | sort -u)
        [ -z "$missing" ] && break
        progress=0 unresolved=""
        for so in $missing; do
            f=$(find "$deps/usr" "$deps/lib" -name "$so" -print -quit 2>/dev/null)
            if [ -n "$f" ]; then
                ln -sf "$(readlink -f "$f")" "$active/$so" && progress=1
                notes+="  $so: from the bundle ($(basename "$(readlink -f "$f")"))"$'\n'
            elif d=$(find_cuda_dir "$so"); then
                case ":$path:" in *":$d:"*) ;; *) path+=":$d"; dirs_added+=" $d"; progress=1 ;; esac
                notes+="  $so: $d"$'\n'
            else
                unresolved+=" $so"
            fi
        done
        [ $progress -eq 0 ] && break
    done
    # after the last change: what is still missing, and symbol versions the system lacks
    local final
    final=$(LD_LIBRARY_PATH="$path${base:+:$base}" ldd "${bins[@]}" 2>&1)
    unresolved=$(awk '/=> not found/ { print $1 }' <<<"$final" | sort -u | tr '\n' ' ')
    local versions
    versions=$(grep -E "version \`[^']+' not found" <<<"$final" | sed -E 's/^[[:space:]]+//' | sort -u)
    [ -n "$notes" ] && printf 'gpu_bundle env: libraries this machine lacked:\n%s' "$notes" >&2
    if [ -n "$unresolved" ] || [ -n "$versions" ]; then
        [ -n "$unresolved" ] && say "still missing: $unresolved(not in $DEPS, the CUDA toolkit folders or the Python NVIDIA wheels; for CUDA libraries set LD_LIBRARY_PATH to their folder)"
        [ -n "$versions" ] && say "this machine's libraries are too old for the bundle:"$'\n'"$versions"
        return 1
    fi
    path+="${base:+:$base}"
    path=$(tr ':' '\n' <<<"$path" | awk 'NF && !seen[$0]++' | paste -sd:) # once each, in order
    if [ $print_path_only -eq 1 ]; then echo "$path"; else printf 'export LD_LIBRARY_PATH=%q\n' "$path"; fi
}

# ---- build side --------------------------------------------------------------------------------

# The Debian package owning the library file $1 (merged /usr: try the path as given, its target,
# and the /usr spelling).
owner_package() {
    local p candidates=("$1" "$(readlink -f "$1")")
    case $1 in /lib/*|/lib64/*) candidates+=("/usr$1") ;; esac
    local owner
    for p in "${candidates[@]}"; do
        owner=$(dpkg -S "$p" 2>/dev/null | head -n 1 | cut -d: -f1)
        if [ -n "$owner" ]; then echo "$owner"; return 0; fi
    done
    return 1
}

# Highest GLIBC_x.y symbol version the ELF files $@ need.
glibc_needed() {
    objdump -T "$@" 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sort -u -V | tail -n 1
}

# Bytes of the device copy: tracked and untracked-not-ignored files, outside the bundle.
tree_bytes() {
    git ls-files -z --cached --others --exclude-standard 2>/dev/null |
        grep -z -v -E "^(${DEPS#./}|${DEPS#./}/.*)$" |
        while IFS= read -r -d '' f; do [ -f "$f" ] && [ ! -L "$f" ] && printf '%s\0' "$f"; done |
        du -cb --files0-from=- 2>/dev/null | tail -n 1 | cut -f1
}

cmd_make() {
    local build=1
    for a in "$@"; do
        case $a in
            --no-build) build=0 ;;
            -h|--help) sed -n '2,40p' "$0"; return 0 ;;
            *) say "unknown option $a (use --no-build, or the env subcommand)"; return 2 ;;
        esac
    done
    local gpu_build=${BUILD_GPU:-build-gpu} arch=${ARCH:--march=x86-64-v3} jobs=${JOBS:-2}
    local deps_abs
    deps_abs=$(realpath -m "$DEPS")
    case $deps_abs in
        "$ROOT"/?*) ;;
        *) say "GPU_DEPS_DIR=$DEPS must be a folder inside the repository ($ROOT)"; return 2 ;;
    esac
    if git rev-parse --git-dir >/dev/null 2>&1; then
        if ! git check-ignore -q "$gpu_build/x"; then
            say "$gpu_build/ is not git-ignored: the device copy would carry the whole build. Add the line"
            say "    /$gpu_build/"
            say "to .gitignore (or set BUILD_GPU to an ignored folder)."
            return 2
        fi
        git check-ignore -q "$DEPS/x" ||
            say "note: $DEPS/ is not git-ignored (add '/${DEPS#./}/' to .gitignore); it travels with the working tree either way"
    fi

    # ---- 1. build ----
    local tests=() t
    for t in tests/unit/test_*.c; do
        grep -q DETR_CUDA "$t" && tests+=("tests/$(basename "$t" .c)")
    done
    local progs=(detr-train detr-prof detr-data detr-infer bench/bench_train "${tests[@]}")
    if [ $build -eq 1 ]; then
        local nvcc=${NVCC:-$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)}
        [ -n "$nvcc" ] || { say "nvcc not found: the bundle needs the CUDA build (CUDA toolkit)"; return 1; }
        say "building ${progs[*]} in $gpu_build (CUDA=1 ARCH=$arch, -j$jobs; nvcc is slow on few cores)"
        mkdir -p "$gpu_build" || return 1
        make -j"$jobs" CUDA=1 BUILD="$gpu_build" ARCH="$arch" "${progs[@]/#/$gpu_build/}" >"$gpu_build/make.log" 2>&1 ||
            { tail -n 30 "$gpu_build/make.log" >&2; say "build failed (full log: $gpu_build/make.log)"; return 1; }
    fi
    local p
    for p in "${progs[@]}"; do
        [ -x "$gpu_build/$p" ] || { say "$gpu_build/$p is missing (run without --no-build)"; return 1; }
    done
    "$gpu_build/detr-train" --version 2>/dev/null | grep -q 'CUDA runtime' ||
        { say "$gpu_build/detr-train was built without CUDA"; return 1; }

    # ---- 2. the programs, without debug sections ----
    rm -rf "$DEPS"
    mkdir -p "$DEPS/build/bench" "$DEPS/build/tests" || return 1
    for p in "${progs[@]}"; do
        strip --strip-debug -o "$DEPS/build/$p" "$gpu_build/$p" || { say "strip $p failed"; return 1; }
    done

    # ---- 3. libraries: ldd -> packages -> apt-get download -> dpkg -x ----
    local lddout
    lddout=$(ldd "$DEPS"/build/detr-* "$DEPS"/build/bench/* "$DEPS"/build/tests/*) || { say "ldd failed"; return 1; }
    if grep -q 'not found' <<<"$lddout"; then
        say "the programs need libraries this machine does not have:"; grep 'not found' <<<"$lddout" | sort -u >&2; return 1
    fi
    local -A pkg_of=() needed=()
    local so path pkg
    while read -r so path; do
        [[ $so =~ $EXCLUDE_RE ]] && continue
        needed[$so]=1
        pkg=$(owner_package "$path") || { say "no Debian package owns $path ($so)"; return 1; }
        pkg_of[$pkg]=1
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' <<<"$lddout" | sort -u)
    local debs
    debs=$(mktemp -d) || return 1
    say "packages: ${!pkg_of[*]}"
    for pkg in "${!pkg_of[@]}"; do
        local ver
        ver=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null)
        (cd "$debs" && { apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >/dev/null 2>&1 ||
                         apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null 2>&1; }) ||
            { say "apt-get download $pkg failed (no network, or no such package in the configured archive)"; rm -rf "$debs"; return 1; }
    done
    local deb
    for deb in "$debs"/*.deb; do
        dpkg -x "$deb" "$DEPS" || { say "dpkg -x $deb failed"; rm -rf "$debs"; return 1; }
        dpkg-deb -f "$deb" Package Version | sed 's/^[^:]*: //' | paste -sd' ' >>"$DEPS/PACKAGES"
    done
    rm -rf "$debs"
    # keep only the needed libraries, each as a plain file under its soname (no symbolic links:
    # the device copy need not preserve them)
    local keep=" "
    for so in "${!needed[@]}"; do
        while IFS= read -r f; do
            if [ -L "$f" ]; then
                cp "$(readlink -f "$f")" "$f.tmp" || { say "cannot copy $f"; return 1; }
                mv -f "$f.tmp" "$f" || return 1
            fi
            keep+="$f "
        done < <(find "$DEPS/usr" "$DEPS/lib" -name "$so" 2>/dev/null)
    done
    while IFS= read -r -d '' f; do
        case $keep in *" $f "*) ;; *) rm -f "$f" ;; esac
    done < <(find "$DEPS/usr" "$DEPS/lib" \( -type f -o -type l \) -print0 2>/dev/null)
    find "$DEPS" -mindepth 1 -type d -empty -delete 2>/dev/null

    # ---- 4. checks ----
    local ok=1 libdirs
    for so in "${!needed[@]}"; do
        [ -n "$(find "$DEPS/usr" "$DEPS/lib" -name "$so" -print -quit 2>/dev/null)" ] ||
            { say "the bundle lacks $so"; ok=0; }
    done
    libdirs=$(find "$DEPS/usr" "$DEPS/lib" -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
    local libs=()
    while IFS= read -r -d '' f; do libs+=("$f"); done < <(find "$DEPS/usr" "$DEPS/lib" -type f -name '*.so*' -print0 2>/dev/null)
    if [ ${#libs[@]} -gt 0 ] && LD_LIBRARY_PATH=$libdirs ldd "${libs[@]}" 2>&1 | grep -q 'not found'; then
        say "bundled libraries miss dependencies:"; LD_LIBRARY_PATH=$libdirs ldd "${libs[@]}" 2>&1 | grep 'not found' | sort -u >&2
        ok=0
    fi
    local glibc
    glibc=$(glibc_needed "$DEPS"/build/detr-* "$DEPS"/build/bench/* "$DEPS"/build/tests/* "${libs[@]}")
    local deps_bytes tree total
    deps_bytes=$(du -sb "$DEPS" | cut -f1)
    tree=$(tree_bytes)
    total=$((deps_bytes + ${tree:-0}))
    echo
    echo "== bundle $DEPS: $(awk -v b="$deps_bytes" 'BEGIN { printf "%.1f MiB", b / 1048576 }') " \
         "(programs $(du -sb "$DEPS/build" | awk '{ printf "%.1f MiB", $1 / 1048576 }'), libraries from:" \
         "$(cut -d' ' -f1 "$DEPS/PACKAGES" | paste -sd' '))"
    echo "   working tree copy $(awk -v b="${tree:-0}" 'BEGIN { printf "%.1f MiB", b / 1048576 }');" \
         "total $(awk -v b="$total" 'BEGIN { printf "%.1f MiB", b / 1048576 }') of the 64 MiB the device copy may hold"
    echo "   the bundle needs glibc >= ${glibc#GLIBC_} on the device (Ubuntu 22.04 has 2.35, 24.04 2.39)"
    if [ "$total" -gt "$CARRY_LIMIT" ]; then
        say "too big for the device copy (64 MiB): remove large untracked files, or build fewer tests"; ok=0
    fi
    [ $ok -eq 1 ] || return 1
    echo
    echo "carry: [\"${DEPS#./}\"]"
    echo "device command (one run call, timeout_s 600; docs/gpu-check.md):"
    echo "  BUILD=${DEPS#./}/build GPU_CHECK_BUDGET=320 bash scripts/gpu_check.sh \"\$OUT/gpu-check\";" \
         "python3 bench/gpu_bench.py --build ${DEPS#./}/build --budget 230"
}

case ${1:-make} in
    env) shift; cmd_env "$@" ;;
    make) [ $# -gt 0 ] && shift; cmd_make "$@" ;;
    -h|--help) sed -n '2,40p' "$0" ;;
    -*) cmd_make "$@" ;;
    *) say "unknown subcommand '$1' (make, env)"; exit 2 ;;
esac
