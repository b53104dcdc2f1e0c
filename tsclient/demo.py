"""Last step of `make demo`: live predictions from the registered model, over plain REST (what curl
sends) and through the Python client, then how to query and stop the server yourself."""
from __future__ import annotations

import argparse
import json
import shlex

import requests

from tsclient.ops import Target

EXAMPLES = [
    "I love how smooth the ride was, self-driving cars are the future!",
    "Another recall? I will never trust these autonomous vehicles.",
    "Google is testing its driverless cars in Austin this week.",
]


def main(name: str, version: str) -> None:
    target = Target()
    ep = target.endpoints()
    client = target.client()
    key = client.keys.key("inference")
    url = f"{ep.inference_url}/predictions/{name}"
    print(f"\n== REST: POST {url} (token from {ep.key_file.name})")
    for text in EXAMPLES:
        r = requests.post(url, json={"text": text}, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        r.raise_for_status()
        answer = r.json()
        print(f"  {answer['label']:>9} {answer['score']:.3f}  {text}")

    print(f"\n== Python client: TorchServeClient.predict('{name}', texts=[...], top_k=2)")
    for text, answer in zip(EXAMPLES, client.predict(name, texts=EXAMPLES, top_k=2)):
        print(f"  {json.dumps(answer['scores'])}  {text[:40]}...")

    body = shlex.quote(json.dumps({"text": "What a wonderful day!"}))
    print(f"""
TorchServe is still running with {name} v{version} (token authorization on, loopback only).
Query it yourself:
  KEY=$(python3 -c 'import json; print(json.load(open("key_file.json"))["inference"]["key"])')
  curl -s -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
       -d {body} {url}
  make predict NAME={name} TEXT='What a wonderful day!'
  make models NAME={name}
Stop it with: make stop""")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", required=True)
    parser.add_argument("--version", required=True)
    args = parser.parse_args()
    main(args.name, args.version)
