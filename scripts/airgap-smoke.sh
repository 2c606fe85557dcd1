#!/usr/bin/env bash
# Step 3 of the air-gapped install (docs/onprem.md): prove the install works with no network.
# Hugging Face and pip are set offline, then: Mistral's tokenizers count a prompt from the
# files inside the mistral-common wheel, and the simulator serves a chat completion whose
# usage matches that count. To take the network away for real, run it in a namespace without
# one: unshare -rn bash -c "ip link set lo up && scripts/airgap-smoke.sh VENV"
#
#   scripts/airgap-smoke.sh VENV
set -euo pipefail

if [[ $# -ne 1 || "$1" == "-h" || "$1" == "--help" ]]; then
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -eq 1 ]] && exit 0 || exit 2
fi
VENV=$(cd "$1" && pwd)
PYV="$VENV/bin/python"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_NO_INDEX=1
# Not this checkout: the installed package must be what runs.
cd "$(mktemp -d)"

echo "==> Mistral tokenizer (Mixtral-8x7B, v1), offline"
expected=$("$PYV" - <<'PY'
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

tok = MistralTokenizer.v1()
req = ChatCompletionRequest(messages=[UserMessage(content="Say hello from the air gap.")])
print(len(tok.encode_chat_completion(req).tokens))
PY
)
echo "prompt tokens: $expected"

port=$("$PYV" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
echo "==> simulator on 127.0.0.1:$port (log: $log)"
"$VENV/bin/servelab" serve --engine sim --model mixtral-8x7b --gpu h100 --tp 2 --dtype bf16 \
  --host 127.0.0.1 --port "$port" --speedup 20 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT

"$PYV" - "$port" "$expected" <<'PY'
import json
import sys
import time
import urllib.request

port, expected = sys.argv[1], int(sys.argv[2])
base = f"http://127.0.0.1:{port}"
deadline = time.monotonic() + 120
while True:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as r:
            if r.status == 200:
                break
    except OSError:
        pass
    if time.monotonic() > deadline:
        sys.exit("simulator did not become healthy within 120 s")
    time.sleep(0.2)
body = json.dumps(
    {"model": "mixtral-8x7b", "max_tokens": 8,
     "messages": [{"role": "user", "content": "Say hello from the air gap."}]}
).encode()
req = urllib.request.Request(base + "/v1/chat/completions", body, {"content-type": "application/json"})
with urllib.request.urlopen(req, timeout=60) as r:
    answer = json.load(r)
usage = answer["usage"]
print("usage:", usage)
if usage["prompt_tokens"] != expected:
    sys.exit(f"prompt_tokens {usage['prompt_tokens']} != tokenizer count {expected}")
if usage["completion_tokens"] != 8:
    sys.exit(f"completion_tokens {usage['completion_tokens']} != 8")
PY
echo "air-gapped install OK: tokenizer and simulator work offline"
