#!/usr/bin/env bash
# `make image-check`: what `docker build -f deploy/Dockerfile .` would do, without a Docker
# engine (CI has none), so that CI fails when the Dockerfile would not build.
#
#   1. context   the repository as Docker sees it: every file minus .dockerignore.
#   2. build     the stage(s) the runtime stage copies `--from`, replayed as processes:
#                WORKDIR -> a directory under a temporary root (/src -> $tmp/stage/build/src),
#                COPY    -> copies exactly those paths from the context (a missing one fails,
#                           as in Docker), ENV/ARG -> exported to the RUNs,
#                RUN     -> the same command, `/bin/sh -c` in that directory (the builder
#                           image's shell: dash on Debian), with a clean environment.
#                Skipped, and printed: a RUN whose command begins with `apt-get` (OS
#                packages are the builder image's toolchain; on CI `.ci/setup.sh build`
#                installs them, and the packages it names must be installed here).
#                A `target` directory next to Cargo.toml is a symlink to a persistent
#                directory (target/image), so repeated runs are incremental.
#   3. runtime   every COPY of the runtime stage has its source (from the build stage or
#                the context); the binary needs only libraries distroless/cc-debian12
#                ships (ldd) and no newer glibc/OpenSSL symbols; it runs (--version,
#                --help); base images are pinned by digest; the OCI labels are there.
#
# Usage: .ci/image.sh [-f DOCKERFILE] [--keep]
#   -f, --file DOCKERFILE   default deploy/Dockerfile (or $IMAGE_DOCKERFILE)
#   --keep                  keep the temporary root and print its path
#   $IMAGE_TARGET_DIR       cargo's target directory for the replay (default target/image)
#
# Supported Dockerfile subset (anything else fails loudly): FROM [--platform] image [AS n],
# ARG, ENV k=v, LABEL, WORKDIR, COPY [--from|--chown|--chmod|--link] src... dest (shell
# form), RUN (shell form, no --mount, no heredoc), USER, EXPOSE, ENTRYPOINT/CMD (exec form).
# shellcheck disable=SC1003,SC2016  # ('\\' in case patterns; sed's literal $)
set -euo pipefail

SECONDS=0
invoked_from="$PWD"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dockerfile="${IMAGE_DOCKERFILE:-$repo/deploy/Dockerfile}"
target_dir="${IMAGE_TARGET_DIR:-$repo/target/image}"
keep=""

usage() { sed -n '/^# Usage:/,/^# *\$IMAGE_TARGET_DIR/s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
  case "$1" in
    -f | --file) [ $# -ge 2 ] || { usage >&2; exit 2; }; dockerfile="$2"; shift 2 ;;
    --file=*) dockerfile="${1#*=}"; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "image-check: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$dockerfile" in /*) ;; *) dockerfile="$invoked_from/$dockerfile" ;; esac
case "$target_dir" in /*) ;; *) target_dir="$invoked_from/$target_dir" ;; esac

# distroless/cc-debian12: libc6 (glibc 2.36), libssl3 (OpenSSL 3.0), libgcc-s1,
# libstdc++6 (GCC 12), libgomp1. Nothing else: no zlib, no libsasl2, no libzstd.
ALLOWED_LIBS=('ld-linux-*.so.*' libc.so.6 libm.so.6 libdl.so.2 libpthread.so.0 librt.so.1
  libresolv.so.2 libutil.so.1 libanl.so.1 # (the rest of libc6)
  libgcc_s.so.1 'libstdc++.so.6' libgomp.so.1 libssl.so.3 libcrypto.so.3)
MAX_GLIBC="2.36"
MAX_GLIBCXX="3.4.30"
OPENSSL_SERIES="3.0"
CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"
REQUIRED_LABELS="title description licenses source version revision created"

section() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() {
  printf '\nimage-check: FAILED: %s\n' "$1" >&2
  shift
  local l
  for l in "$@"; do printf '    %s\n' "$l" >&2; done
  printf 'image-check: %s would not build or run as intended (%ss)\n' "${dockerfile#"$repo"/}" "$SECONDS" >&2
  exit 1
}

for tool in cargo find tar ldd sh; do
  command -v "$tool" >/dev/null || fail "$tool is not installed" "run: bash .ci/setup.sh build"
done
[ -f "$dockerfile" ] || fail "no Dockerfile at $dockerfile"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/pcbridge-image.XXXXXX")"
cleanup() {
  if [ -n "$keep" ]; then echo "image-check: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
ctx="$tmp/context"
mkdir -p "$ctx" "$tmp/stage"

echo "image-check: $dockerfile"
echo "image-check: context $repo, cargo target $target_dir"

# ---------------------------------------------------------------------------------------
# Words: Dockerfile-style splitting on unquoted white space, with '…', "…", \ and
# $NAME / ${NAME} expansion from the Dockerfile's ARG/ENV values (the array `vars`).
# Sets the array `words`. Fails on ${NAME:-…}-style modifiers.
declare -A vars=()
words=()
where=""
tokenize() {
  local s="$1" n=${#1} i=0 c q="" word="" inword=0 name rest
  words=()
  while [ "$i" -lt "$n" ]; do
    c="${s:i:1}"
    if [ "$q" = "'" ]; then
      if [ "$c" = "'" ]; then q=""; else word+="$c"; fi
    elif [ "$c" = '$' ]; then
      rest="${s:i+1}"
      if [[ "$rest" =~ ^\{([A-Za-z_][A-Za-z0-9_]*)\} ]]; then
        name="${BASH_REMATCH[1]}"
        word+="${vars[$name]-}"
        i=$((i + ${#name} + 2))
      elif [[ "$rest" =~ ^\{ ]]; then
        fail "$where: unsupported variable syntax in: $s" "only \$NAME and \${NAME} are understood by .ci/image.sh"
      elif [[ "$rest" =~ ^([A-Za-z_][A-Za-z0-9_]*) ]]; then
        name="${BASH_REMATCH[1]}"
        word+="${vars[$name]-}"
        i=$((i + ${#name}))
      else
        word+='$'
      fi
      inword=1
    elif [ "$q" = '"' ]; then
      case "$c" in
        '"') q="" ;;
        '\')
          if [[ "${s:i+1:1}" == [\"\\\$] ]]; then i=$((i + 1)); word+="${s:i:1}"; else word+='\'; fi ;;
        *) word+="$c" ;;
      esac
    else
      case "$c" in
        ' ' | $'\t') if [ "$inword" = 1 ]; then words+=("$word"); word=""; inword=0; fi ;;
        "'" | '"') q="$c"; inword=1 ;;
        '\') i=$((i + 1)); word+="${s:i:1}"; inword=1 ;;
        *) word+="$c"; inword=1 ;;
      esac
    fi
    i=$((i + 1))
  done
  [ -z "$q" ] || fail "$where: unterminated quote in: $s"
  if [ "$inword" = 1 ]; then words+=("$word"); fi
  return 0
}

# An exec-form JSON array of strings -> the array `words`. Fails on the shell form.
json_array() {
  local s="$1" item
  words=()
  s="${s#"${s%%[![:space:]]*}"}"
  [[ "$s" == \[* ]] || fail "$where: $2 must use the exec form [\"…\", …]" \
    "distroless has no /bin/sh, so the shell form cannot start in the runtime image"
  s="${s#\[}"
  while [[ "$s" =~ ^[[:space:]]*\"(([^\"\\]|\\.)*)\"[[:space:]]*(,|\])(.*)$ ]]; do
    item="${BASH_REMATCH[1]}"
    item="${item//\\\"/\"}"
    words+=("${item//\\\\/\\}")
    s="${BASH_REMATCH[4]}"
    [ "${BASH_REMATCH[3]}" = "]" ] && { [[ "$s" =~ ^[[:space:]]*$ ]] || break; return 0; }
  done
  fail "$where: cannot parse $2 as a JSON array of strings"
}

# ---------------------------------------------------------------------------------------
section "1/3 build context: $repo minus .dockerignore"
# .dockerignore as Docker reads it (moby/patternmatcher): '#' at the start of a line is a
# comment, white space trimmed, filepath.Clean, a leading '/' dropped, patterns anchored at
# the context root; '*' and '?' do not match '/', '**' matches any number of directories;
# a path is excluded when it or one of its parent directories matches.
ignore_re=""
if [ -f "$repo/.dockerignore" ]; then
  lineno=0
  while IFS= read -r raw || [ -n "$raw" ]; do
    lineno=$((lineno + 1))
    raw="${raw%$'\r'}"
    [ "$lineno" = 1 ] && raw="${raw#$'\xef\xbb\xbf'}"
    [[ "$raw" == \#* ]] && continue
    p="${raw#"${raw%%[![:space:]]*}"}"
    p="${p%"${p##*[![:space:]]}"}"
    [ -z "$p" ] && continue
    case "$p" in
      '!'*) fail ".dockerignore:$lineno: '$p': '!' exceptions are not supported by .ci/image.sh" \
        "implement them there (and stop pruning excluded directories) before using one" ;;
      *'['* | *']'* | *'\'*) fail ".dockerignore:$lineno: '$p': character classes and escapes are not supported by .ci/image.sh" ;;
    esac
    # filepath.Clean (without '..'), then drop one leading '/'.
    while [[ "$p" == *//* ]]; do p="${p//\/\//\/}"; done
    while [[ "$p" == ./* ]]; do p="${p#./}"; done
    while [[ "$p" == */./* ]]; do p="${p//\/.\//\/}"; done
    p="${p%/.}"
    [ "${#p}" -gt 1 ] && p="${p%/}"
    [ "${#p}" -gt 1 ] && p="${p#/}"
    case "/$p/" in */../* | //) fail ".dockerignore:$lineno: '$raw': '..' and the bare root are not supported" ;; esac
    [ "$p" = "." ] && fail ".dockerignore:$lineno: '$raw' would exclude the whole context"
    re=""
    i=0
    while [ "$i" -lt "${#p}" ]; do
      c="${p:i:1}"
      if [ "$c" = "*" ] && [ "${p:i+1:1}" = "*" ]; then
        i=$((i + 2))
        [ "${p:i:1}" = "/" ] && i=$((i + 1))
        if [ "$i" -ge "${#p}" ]; then re+=".*"; else re+="(.*/)?"; fi
        continue
      fi
      case "$c" in
        '*') re+="[^/]*" ;;
        '?') re+="[^/]" ;;
        [.+\(\)\|^\$\{\}]) re+="\\$c" ;;
        *) re+="$c" ;;
      esac
      i=$((i + 1))
    done
    info "exclude  $p"
    ignore_re+="${ignore_re:+|}$re"
  done <"$repo/.dockerignore"
else
  info "no .dockerignore: the whole repository is the context"
fi
# Excluded directories are pruned, not walked (target/ is large).
find_args=(. -mindepth 1)
if [ -n "$ignore_re" ]; then
  find_args+=(-regextype posix-extended -regex "\./($ignore_re)" -prune -o)
fi
(cd "$repo" && find "${find_args[@]}" -print0 | tar --null --no-recursion -T - -cf -) | tar -xf - -C "$ctx"
info "context: $(find "$ctx" -type f | wc -l) files, $(du -sh "$ctx" | cut -f1)"

# ---------------------------------------------------------------------------------------
# The Dockerfile as instructions: continuation lines joined (the escape and newline are
# removed, as Docker does), comment and empty lines dropped, also inside a continuation.
ins_kw=()
ins_args=()
ins_line=()
ins_stage=()
stage_names=()
stage_images=()
n=0
buf=""
start=0
escape_ok=1
while IFS= read -r line || [ -n "$line" ]; do
  n=$((n + 1))
  line="${line%$'\r'}"
  if [ -z "$buf" ] && [ "${#ins_kw[@]}" = 0 ] && [[ "$line" =~ ^#[[:space:]]*escape[[:space:]]*= ]]; then
    escape_ok=""
  fi
  if [[ "$line" =~ ^[[:space:]]*# ]] || [[ "$line" =~ ^[[:space:]]*$ ]]; then continue; fi
  [ -z "$buf" ] && start=$n
  if [[ "$line" =~ ^(.*)\\[[:space:]]*$ ]]; then
    buf+="${BASH_REMATCH[1]}"
    continue
  fi
  buf+="$line"
  buf="${buf#"${buf%%[![:space:]]*}"}"
  kw="${buf%%[[:space:]]*}"
  args=""
  [ "$kw" != "$buf" ] && args="${buf#"$kw"}" && args="${args#"${args%%[![:space:]]*}"}"
  kw="${kw^^}"
  if [ "$kw" = FROM ]; then
    where="Dockerfile:$start"
    tokenize "$args"
    [[ "${words[0]-}" == --platform=* ]] && words=("${words[@]:1}")
    sname="${#stage_names[@]}"
    if [ "${#words[@]}" = 3 ] && [ "${words[1],,}" = as ]; then
      sname="${words[2],,}"
    elif [ "${#words[@]}" != 1 ]; then
      fail "$where: cannot parse: FROM $args"
    fi
    stage_names+=("$sname")
    stage_images+=("${words[0]}")
  fi
  ins_kw+=("$kw")
  ins_args+=("$args")
  ins_line+=("$start")
  ins_stage+=("$((${#stage_names[@]} - 1))")
  buf=""
done <"$dockerfile"
[ -z "$buf" ] || fail "Dockerfile ends inside a continued line (line $start)"
[ -n "$escape_ok" ] || fail "a '# escape=' parser directive is not supported by .ci/image.sh"
[ "${#stage_names[@]}" -gt 0 ] || fail "no FROM in $dockerfile"
runtime=$((${#stage_names[@]} - 1))

# Global ARGs (before the first FROM) give defaults to ARGs redeclared in a stage.
declare -A global_args=()
for k in "${!ins_kw[@]}"; do
  [ "${ins_stage[$k]}" = -1 ] || continue
  where="Dockerfile:${ins_line[$k]}"
  case "${ins_kw[$k]}" in
    ARG)
      tokenize "${ins_args[$k]}"
      for w in "${words[@]}"; do
        if [[ "$w" == *=* ]]; then global_args[${w%%=*}]="${w#*=}"; else global_args[$w]=""; fi
      done ;;
    *) fail "$where: only ARG may come before the first FROM" ;;
  esac
done

stage_index() { # name or index -> index, or empty
  local i
  for i in "${!stage_names[@]}"; do
    if [ "${stage_names[$i]}" = "${1,,}" ]; then echo "$i"; return; fi
  done
  if [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -lt "${#stage_names[@]}" ]; then echo "$1"; fi
}

# The stages the runtime stage copies from, in Dockerfile order.
declare -A wanted=()
for k in "${!ins_kw[@]}"; do
  if [ "${ins_stage[$k]}" != "$runtime" ] || [ "${ins_kw[$k]}" != COPY ]; then continue; fi
  where="Dockerfile:${ins_line[$k]}"
  tokenize "${ins_args[$k]}"
  for w in "${words[@]}"; do
    [[ "$w" == --from=* ]] || continue
    s="$(stage_index "${w#--from=}")"
    [ -n "$s" ] || fail "$where: COPY --from=${w#--from=} names no stage of this Dockerfile" \
      "copying from an external image cannot be checked without a registry"
    [ "$s" -lt "$runtime" ] || fail "$where: COPY --from a later stage"
    wanted[$s]=1
  done
done
[ "${#wanted[@]}" -gt 0 ] || fail "the runtime stage copies nothing --from a build stage"

# Base images: tag for readers, digest for reproducible pulls.
for s in "${!stage_names[@]}"; do
  img="${stage_images[$s]}"
  [ -n "$(stage_index "$img")" ] && [ "$(stage_index "$img")" -lt "$s" ] && continue
  [ "$img" = scratch ] && continue
  [[ "$img" =~ ^[^@[:space:]]+:[^@/[:space:]]+@sha256:[0-9a-f]{64}$ ]] ||
    fail "FROM $img is not pinned as image:tag@sha256:<digest>" \
      "resolve it with: crane digest <image:tag>  (or docker buildx imagetools inspect <image:tag>)"
done

# ---------------------------------------------------------------------------------------
# COPY: sources relative to $1 (the context or a stage's root), destination under stage
# root $2 with working directory $3. Fills `copied` with the destinations.
copied=()
do_copy() {
  local srcroot="$1" root="$2" cwd="$3" from_label="$4"
  shift 4
  local dest="${!#}" d m dest_dir="" src matches=() all=()
  local srcs=("${@:1:$#-1}")
  [ "${#srcs[@]}" -gt 0 ] || fail "$where: COPY needs a source and a destination"
  for src in "${srcs[@]}"; do
    case "/$src/" in */../*) fail "$where: COPY source '$src' leaves the $from_label" ;; esac
    src="${src#/}"
    src="${src:-.}"
    if [[ "$src" == *[\*\?\[]* ]]; then
      mapfile -t matches < <(cd "$srcroot" && shopt -s dotglob nullglob && for m in $src; do printf '%s\n' "$m"; done)
      [ "${#matches[@]}" -gt 0 ] || fail "$where: COPY $src: no file in the $from_label matches"
    else
      [ -e "$srcroot/$src" ] || [ -L "$srcroot/$src" ] || {
        if [ "$from_label" = "build context" ]; then
          fail "$where: COPY $src: not in the build context" \
            "docker build stops here too (failed to compute cache key: \"/$src\": not found)" \
            "(missing from the repository, or excluded by .dockerignore)"
        else
          fail "$where: COPY --from: /$src does not exist in the $from_label"
        fi
      }
      matches=("$src")
    fi
    all+=("${matches[@]}")
  done
  case "$dest" in /*) d="$root$dest" ;; *) d="$cwd/$dest" ;; esac
  if [[ "$dest" == */ ]] || [ "${#all[@]}" -gt 1 ] || [ -d "$d" ]; then dest_dir=1; fi
  for m in "${all[@]}"; do
    if [ -d "$srcroot/$m" ]; then
      mkdir -p "$d"
      cp -a "$srcroot/$m/." "$d/"
      copied+=("$d")
    elif [ -n "$dest_dir" ]; then
      mkdir -p "$d"
      cp -aL "$srcroot/$m" "$d/"
      copied+=("$d/${m##*/}")
    else
      mkdir -p "$(dirname "$d")"
      cp -aL "$srcroot/$m" "$d"
      copied+=("$d")
    fi
  done
}

# The RUN environment: the host's toolchain and network settings, not its build flags
# (no CARGO_TARGET_DIR, RUSTFLAGS, CC…), plus the stage's ARG and ENV values.
base_env=()
for v in $(compgen -e); do
  case "$v" in
    PATH | HOME | USER | LOGNAME | LANG | LC_ALL | TERM | TMPDIR | CARGO_HOME | RUSTUP_* | \
      CARGO_NET_* | CARGO_HTTP_* | CARGO_REGISTRIES_* | CARGO_REGISTRY_* | \
      http_proxy | https_proxy | no_proxy | all_proxy | HTTP_PROXY | HTTPS_PROXY | NO_PROXY | ALL_PROXY | \
      SSL_CERT_FILE | SSL_CERT_DIR) base_env+=("$v=${!v}") ;;
  esac
done

# Packages an apt-get RUN installs must be on this machine for the replay to be faithful.
check_apt_packages() {
  local cmd="$1" seg p missing=()
  command -v dpkg-query >/dev/null || { info "(no dpkg-query here: cannot confirm the packages)"; return 0; }
  while [[ "$cmd" =~ apt-get([[:space:]]+-[^[:space:]]+)*[[:space:]]+install[[:space:]]+([^\&\;\|]*)(.*)$ ]]; do
    seg="${BASH_REMATCH[2]}"
    cmd="${BASH_REMATCH[3]}"
    for p in $seg; do
      [[ "$p" == -* ]] && continue
      p="${p%%=*}"
      if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ]; then
        info "  $p: installed here"
      else
        missing+=("$p")
      fi
    done
  done
  [ "${#missing[@]}" = 0 ] || fail "$where: this machine lacks ${missing[*]}, which the image installs" \
    "run: bash .ci/setup.sh build   (or: apt-get install ${missing[*]})"
}

replay_stage() {
  local s="$1" k root cwd cmd w t0 st abs_dirs=() a
  root="$tmp/stage/${stage_names[$s]}"
  mkdir -p "$root"
  cwd="$root"
  vars=()
  local -A run_env=()
  for k in "${!ins_kw[@]}"; do
    [ "${ins_stage[$k]}" = "$s" ] || continue
    where="Dockerfile:${ins_line[$k]}"
    local kw="${ins_kw[$k]}" args="${ins_args[$k]}"
    case "$kw" in
      FROM)
        info "FROM ${stage_images[$s]}  (stage '${stage_names[$s]}', root $root)"
        tokenize "$args"
        [[ "${words[0]}" == --platform=* ]] && words=("${words[@]:1}")
        [ -z "$(stage_index "${words[0]}")" ] || fail "$where: a stage built FROM another stage is not supported by .ci/image.sh"
        ;;
      ARG)
        tokenize "$args"
        for w in "${words[@]}"; do
          if [[ "$w" == *=* ]]; then vars[${w%%=*}]="${w#*=}"; else vars[$w]="${global_args[$w]-}"; fi
          run_env[${w%%=*}]="${vars[${w%%=*}]}"
          info "ARG ${w%%=*}=${vars[${w%%=*}]}"
        done ;;
      ENV)
        tokenize "$args"
        for w in "${words[@]}"; do
          [[ "$w" == *=* ]] || fail "$where: ENV without '=' (the legacy 'ENV key value' form) is not supported"
          vars[${w%%=*}]="${w#*=}"
          run_env[${w%%=*}]="${w#*=}"
          info "ENV $w"
        done ;;
      WORKDIR)
        tokenize "$args"
        [ "${#words[@]}" = 1 ] || fail "$where: WORKDIR takes one path"
        case "${words[0]}" in
          /*) cwd="$root${words[0]}"; abs_dirs+=("${words[0]%/}") ;;
          *) cwd="$cwd/${words[0]}" ;;
        esac
        mkdir -p "$cwd"
        info "WORKDIR ${words[0]}  -> ${cwd#"$tmp"/}" ;;
      COPY)
        [[ "$args" =~ ^[[:space:]]*\[ ]] && fail "$where: the JSON form of COPY is not supported by .ci/image.sh"
        [[ "$args" == *'<<'* ]] && fail "$where: heredocs are not supported by .ci/image.sh"
        tokenize "$args"
        while [[ "${words[0]-}" == --* ]]; do
          case "${words[0]}" in
            --chown=* | --chmod=* | --link | --link=*) ;;
            --from=*) fail "$where: COPY --from inside a build stage is not supported by .ci/image.sh" ;;
            *) fail "$where: COPY ${words[0]} is not supported by .ci/image.sh" ;;
          esac
          words=("${words[@]:1}")
        done
        [[ "${words[${#words[@]}-1]}" == /* ]] && abs_dirs+=("${words[${#words[@]}-1]%/}")
        copied=()
        do_copy "$ctx" "$root" "$cwd" "build context" "${words[@]}"
        info "COPY ${words[*]}  ok" ;;
      RUN)
        [[ "$args" =~ ^[[:space:]]*\[ ]] && fail "$where: the exec form of RUN is not supported by .ci/image.sh"
        [[ "$args" == --* ]] && fail "$where: RUN flags (--mount, --network…) are not supported by .ci/image.sh"
        [[ "$args" == *'<<'* ]] && fail "$where: heredocs are not supported by .ci/image.sh"
        cmd="$args"
        if [[ "$cmd" == apt-get* ]]; then
          info "RUN (skipped: begins with apt-get; OS packages are the builder image's toolchain)"
          info "    $cmd"
          check_apt_packages "$cmd"
          continue
        fi
        # The image's absolute paths do not exist here: commands must use relative ones.
        for a in "${abs_dirs[@]}"; do
          [ "$a" = "" ] && continue
          if [[ "$cmd" =~ (^|[^[:alnum:]_.-])"$a"(/|[[:space:]]|$) ]]; then
            fail "$where: RUN refers to the image path $a, which .ci/image.sh cannot map" \
              "use a path relative to the WORKDIR"
          fi
        done
        if [ -f "$cwd/Cargo.toml" ] && [ ! -e "$cwd/target" ] && [ ! -L "$cwd/target" ]; then
          mkdir -p "$target_dir"
          ln -s "$target_dir" "$cwd/target"
          info "(target -> $target_dir: persistent, so the replay is incremental)"
        fi
        info "RUN $cmd"
        local envs=("${base_env[@]}")
        for w in "${!run_env[@]}"; do envs+=("$w=${run_env[$w]}"); done
        t0=$SECONDS
        st=0
        (cd "$cwd" && exec env -i "${envs[@]}" /bin/sh -c "$cmd") || st=$?
        [ "$st" = 0 ] || fail "$where: RUN exited with status $st" "$cmd"
        info "RUN ok ($((SECONDS - t0))s)" ;;
      LABEL | EXPOSE | USER | CMD | ENTRYPOINT | HEALTHCHECK | STOPSIGNAL | VOLUME | MAINTAINER)
        info "$kw (no effect on the build stage's files)" ;;
      *) fail "$where: $kw is not supported in a build stage by .ci/image.sh" ;;
    esac
  done
}

section "2/3 build stage, replayed"
image_rust=""
for s in "${!stage_names[@]}"; do
  [ -n "${wanted[$s]-}" ] || continue
  if [[ "${stage_images[$s]}" =~ ^(docker\.io/)?(library/)?rust:([0-9]+\.[0-9]+(\.[0-9]+)?) ]]; then
    image_rust="${BASH_REMATCH[3]}"
  fi
done
host_rust="$(rustc --version 2>/dev/null | awk '{print $2}')" || true
rust_version="$(sed -n 's/^rust-version *= *"\(.*\)".*/\1/p' "$ctx/Cargo.toml" 2>/dev/null | head -n1)"
if [ -n "$image_rust" ]; then
  if [ -n "$rust_version" ] && [ "$(printf '%s\n%s\n' "$rust_version" "$image_rust" | sort -V | head -n1)" != "$rust_version" ]; then
    fail "the builder image has Rust $image_rust, older than Cargo.toml's rust-version $rust_version"
  fi
  if [ "$image_rust" != "$host_rust" ] && [ "$image_rust.0" != "$host_rust" ]; then
    info "note: the image builds with Rust $image_rust, this replay with the host's $host_rust"
  else
    info "Rust $host_rust here, as in the image"
  fi
else
  info "note: the builder's Rust version is not in its tag; this replay uses the host's $host_rust"
fi
for s in "${!stage_names[@]}"; do
  [ -n "${wanted[$s]-}" ] && replay_stage "$s"
done

# ---------------------------------------------------------------------------------------
section "3/3 runtime stage: ${stage_images[$runtime]}"
rootfs="$tmp/runtime"
mkdir -p "$rootfs"
rcwd="$rootfs"
vars=()
declare -A labels=() renv=()
entrypoint=()
cmd_words=()
user=""
for k in "${!ins_kw[@]}"; do
  [ "${ins_stage[$k]}" = "$runtime" ] || continue
  where="Dockerfile:${ins_line[$k]}"
  kw="${ins_kw[$k]}"
  args="${ins_args[$k]}"
  case "$kw" in
    FROM) ;;
    ARG)
      tokenize "$args"
      for w in "${words[@]}"; do
        if [[ "$w" == *=* ]]; then vars[${w%%=*}]="${w#*=}"; else vars[$w]="${global_args[$w]-}"; fi
      done ;;
    ENV)
      tokenize "$args"
      for w in "${words[@]}"; do
        [[ "$w" == *=* ]] || fail "$where: ENV without '=' is not supported"
        vars[${w%%=*}]="${w#*=}"
        renv[${w%%=*}]="${w#*=}"
        info "ENV $w"
      done ;;
    LABEL)
      tokenize "$args"
      for w in "${words[@]}"; do
        [[ "$w" == *=* ]] || fail "$where: LABEL needs key=value"
        labels[${w%%=*}]="${w#*=}"
      done ;;
    WORKDIR)
      tokenize "$args"
      case "${words[0]}" in /*) rcwd="$rootfs${words[0]}" ;; *) rcwd="$rcwd/${words[0]}" ;; esac
      mkdir -p "$rcwd"
      info "WORKDIR ${words[0]}" ;;
    COPY)
      [[ "$args" =~ ^[[:space:]]*\[ ]] && fail "$where: the JSON form of COPY is not supported by .ci/image.sh"
      tokenize "$args"
      from=""
      while [[ "${words[0]-}" == --* ]]; do
        case "${words[0]}" in
          --from=*) from="${words[0]#--from=}" ;;
          --chown=* | --chmod=* | --link | --link=*) ;;
          *) fail "$where: COPY ${words[0]} is not supported by .ci/image.sh" ;;
        esac
        words=("${words[@]:1}")
      done
      copied=()
      if [ -n "$from" ]; then
        s="$(stage_index "$from")"
        do_copy "$tmp/stage/${stage_names[$s]}" "$rootfs" "$rcwd" "'${stage_names[$s]}' stage after the build" "${words[@]}"
        info "COPY --from=$from ${words[*]}  ok (exists after the build)"
      else
        do_copy "$ctx" "$rootfs" "$rcwd" "build context" "${words[@]}"
        info "COPY ${words[*]}  ok (in the context)"
      fi ;;
    USER)
      tokenize "$args"
      user="${words[0]}"
      [[ "$user" =~ ^[0-9]+(:[0-9]+)?$ ]] || fail "$where: USER $user: use the numeric uid[:gid] (65532:65532)" \
        "Kubernetes' runAsNonRoot can only verify a numeric user"
      [ "${user%%:*}" != 0 ] || fail "$where: USER 0 is root"
      info "USER $user" ;;
    EXPOSE) info "EXPOSE $args" ;;
    ENTRYPOINT) json_array "$args" ENTRYPOINT; entrypoint=("${words[@]}") ;;
    CMD) json_array "$args" CMD; cmd_words=("${words[@]}") ;;
    RUN) fail "$where: RUN in the runtime stage: distroless has no shell" ;;
    HEALTHCHECK | STOPSIGNAL | VOLUME) info "$kw $args" ;;
    *) fail "$where: $kw is not supported in the runtime stage by .ci/image.sh" ;;
  esac
done
[ -n "$user" ] || fail "the runtime stage sets no USER: it would run as the base image's user" "add USER 65532:65532"
[ "${#entrypoint[@]}" -gt 0 ] || fail "the runtime stage has no ENTRYPOINT"
info "ENTRYPOINT ${entrypoint[*]}   CMD ${cmd_words[*]-}"

# Every absolute path the container is started with must be in the image.
for w in "${entrypoint[@]}" "${cmd_words[@]}"; do
  [[ "$w" == /* ]] || continue
  [ -e "$rootfs$w" ] || fail "ENTRYPOINT/CMD names $w, which no COPY puts in the image"
done
bin="$rootfs${entrypoint[0]}"
[ -x "$bin" ] || fail "${entrypoint[0]} is not executable in the image"

# The CA bundle librdkafka's OpenSSL loads (see the Dockerfile's comment on SSL_CERT_FILE).
[ "${renv[SSL_CERT_FILE]-}" = "$CA_BUNDLE" ] ||
  fail "the runtime stage must set ENV SSL_CERT_FILE=$CA_BUNDLE" \
    "librdkafka (dynamic OpenSSL, ssl.ca.location unset) verifies brokers against OpenSSL's default paths"

for l in $REQUIRED_LABELS; do
  [ -n "${labels[org.opencontainers.image.$l]+x}" ] || fail "missing LABEL org.opencontainers.image.$l"
done
license="$(sed -n 's/^license *= *"\(.*\)".*/\1/p' "$ctx/Cargo.toml" | head -n1)"
[ "${labels[org.opencontainers.image.licenses]}" = "$license" ] ||
  fail "LABEL org.opencontainers.image.licenses=\"${labels[org.opencontainers.image.licenses]}\" but Cargo.toml says \"$license\""
info "labels: $(for l in $REQUIRED_LABELS; do printf '%s ' "$l"; done)(licenses \"$license\")"

echo
info "ldd ${entrypoint[0]}:"
ldd_out="$(ldd "$bin" 2>&1)" || true
printf '%s\n' "$ldd_out" | sed 's/^[[:space:]]*/      /'
bad=()
while read -r first rest; do
  [ -n "$first" ] || continue
  case "$first $rest" in
    *"not a dynamic executable"* | *"statically linked"*) continue ;;
    *"not found"*) bad+=("$first (not found)"); continue ;;
  esac
  lib="${first##*/}"
  case "$lib" in linux-vdso.so.* | linux-gate.so.*) continue ;; esac
  ok=""
  for a in "${ALLOWED_LIBS[@]}"; do
    # shellcheck disable=SC2254
    case "$lib" in $a) ok=1 ;; esac
  done
  [ -n "$ok" ] || bad+=("$lib")
done <<<"$ldd_out"
[ "${#bad[@]}" = 0 ] || fail "the binary needs libraries gcr.io/distroless/cc-debian12 does not ship: ${bad[*]}" \
  "distroless/cc-debian12 has: ${ALLOWED_LIBS[*]}"
info "every library is in distroless/cc-debian12"

if command -v objdump >/dev/null; then
  syms="$(objdump -T "$bin" 2>/dev/null || true)"
  newest() { grep -oE "$1_[0-9]+(\.[0-9]+)+" <<<"$syms" | sed "s/^$1_//" | sort -uV | tail -n1 || true; }
  older_or_equal() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n1)" = "$2" ]; }
  g="$(newest GLIBC)"
  [ -z "$g" ] || older_or_equal "$g" "$MAX_GLIBC" ||
    fail "the binary needs GLIBC_$g; distroless/cc-debian12 has glibc $MAX_GLIBC" "build on bookworm (debian12)"
  x="$(newest GLIBCXX)"
  [ -z "$x" ] || older_or_equal "$x" "$MAX_GLIBCXX" ||
    fail "the binary needs GLIBCXX_$x; distroless/cc-debian12 has GLIBCXX_$MAX_GLIBCXX (GCC 12)"
  o="$(grep -oE 'OPENSSL_[0-9]+(\.[0-9]+)+' <<<"$syms" | sort -uV | grep -v "^OPENSSL_${OPENSSL_SERIES//./\\.}\." || true)"
  [ -z "$o" ] || fail "the binary needs ${o//$'\n'/ }; distroless/cc-debian12 has OpenSSL $OPENSSL_SERIES" "build on bookworm (debian12)"
  ossl="$(grep -oE 'OPENSSL_[0-9]+(\.[0-9]+)+' <<<"$syms" | sort -uV | tail -n1 || true)"
  info "symbol versions: newest GLIBC_${g:-(none)} (<= $MAX_GLIBC), GLIBCXX_${x:-(none)}, ${ossl:-no OPENSSL_*} (OpenSSL $OPENSSL_SERIES)"
else
  info "(no objdump: symbol versions not checked)"
fi

echo
st=0
version_out="$("$bin" --version 2>&1)" || st=$?
[ "$st" = 0 ] || fail "${entrypoint[0]} --version exited with $st" "$version_out"
info "\$ ${entrypoint[0]##*/} --version   -> ${version_out%%$'\n'*}"
help_out="$("$bin" --help 2>&1)" || fail "${entrypoint[0]} --help failed" "$help_out"
if [ "${#cmd_words[@]}" -gt 0 ] && [[ "${cmd_words[0]}" != -* ]]; then
  grep -qE "^[[:space:]]+${cmd_words[0]}([[:space:]]|$)" <<<"$help_out" ||
    fail "CMD [\"${cmd_words[0]}\"] is not a subcommand the binary lists in --help" "$help_out"
  info "\$ ${entrypoint[0]##*/} --help      -> lists '${cmd_words[0]}' (the image's CMD)"
fi
info "binary: $(du -h "$bin" | cut -f1)"

printf '\nimage-check: OK: %s builds and its runtime stage has what it needs (%ss)\n' \
  "${dockerfile#"$repo"/}" "$SECONDS"
