#!/usr/bin/env bash
# make-seeds.sh: write the seed corpus for fuzz_codec (tests/fuzz/corpus/codec/). The seeds are
# small valid packets so the fuzzer starts from inputs that get past framing; rerun after
# editing and commit the resulting files. Bash's printf builtin writes the \xHH bytes, NULs
# included, so the packets below are printf formats on purpose (and '$1' is literal SQL).
# shellcheck disable=SC2059,SC2016
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/corpus/codec"
mkdir -p "$out"

# The int32 n, big-endian.
be32() {
    local n=$1
    printf "$(printf '\\x%02x' $((n >> 24 & 255)) $((n >> 16 & 255)) $((n >> 8 & 255)) \
        $((n & 255)))"
}
# Byte length of what a printf format produces.
fmt_len() {
    printf "$1" | wc -c
}
# A typed message (protocol section 55.7): type byte, int32 length counting itself, body.
msg() {
    printf '%s' "$1"
    be32 $(($(fmt_len "$2") + 4))
    printf "$2"
}
# A startup-phase packet: int32 length counting itself, then code and payload.
startup() {
    be32 $(($(fmt_len "$1") + 4))
    printf "$1"
}

# StartupMessage, protocol 3.0 (196608 = 00 03 00 00).
startup '\x00\x03\x00\x00user\x00alice\x00database\x00orders\x00application_name\x00psql\x00\x00' \
    >"$out/startup-v3"
# SSLRequest (80877103) and GSSENCRequest (80877104).
startup '\x04\xd2\x16\x2f' >"$out/ssl-request"
startup '\x04\xd2\x16\x30' >"$out/gssenc-request"
# CancelRequest (80877102), pid 12345, key 0xdeadbeef.
startup '\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef' >"$out/cancel-request"

# A client's simple and extended query: Query, Parse, Bind, Execute, Sync.
{
    msg Q 'select 1\x00'
    msg P 's1\x00select $1::int\x00\x00\x01\x00\x00\x00\x17'
    msg B '\x00s1\x00\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x00'
    msg E '\x00\x00\x00\x00\x00'
    msg S ''
} >"$out/query-stream"

# ErrorResponse as sluice sends it: S, V, C, M, H fields, then the terminator.
msg E 'SFATAL\x00VFATAL\x00C53300\x00Mpool is full\x00Hraise pool_size\x00\x00' \
    >"$out/error-response"

# A server's login reply: AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery.
{
    msg R '\x00\x00\x00\x00'
    msg S 'client_encoding\x00UTF8\x00'
    msg K '\x00\x00\x30\x39\xde\xad\xbe\xef'
    msg Z 'I'
} >"$out/server-login"

ls -l "$out"
