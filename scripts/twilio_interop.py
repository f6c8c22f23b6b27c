#!/usr/bin/env python3
"""Interop oracle for the Rust tests: answers questions with Twilio's official Python library.

Reads one JSON document on stdin and prints one JSON document on stdout.

  signatures  input:  {"cases": [{"token", "url", "params": [[name, value], ...],
                                  "signature"?: str, "validate_url"?: str}]}
              output: {"results": [{"signature": <RequestValidator.compute_signature>,
                                    "valid": <RequestValidator.validate> or null}]}
              With "signature", "valid" says whether Twilio's validator accepts that signature
              for "validate_url" (default: "url") and the params.

  shared_key  input:  {"cases": [{"secret", "settings", "url", "params": [[name, value], ...],
                                  "signature"?: str}]}
              output: {"results": [{"algorithm": <get_signature_algorithm(settings)>,
                                    "signature": <compute_signature(url, params, algorithm)>
                                                 or null when the algorithm is refused,
                                    "valid": <validate(url, params, signature, algorithm)>
                                             or null}]}
              Webhook Rules SharedKey signatures: "settings" is the
              X-Twilio-Webhooks-Signature-Settings header, "secret" the SharedKey's secret.

  twiml       input:  {"ours": "<xml…>", "stream_url": str, "params": [[name, value], ...]}
              output: {"ours": tree, "twilio": tree} where tree is {tag, attrs, children}
              and "twilio" is what twilio.twiml.voice_response builds for the same stream.

Run by the tests from the virtualenv scripts/test prepares (pip package `twilio`).
"""

import json
import sys
import xml.etree.ElementTree as ET

from twilio.request_validator import RequestValidator, get_signature_algorithm
from twilio.twiml.voice_response import Connect, VoiceResponse


class MultiParams(dict):
    """A dict that also answers getall(), as Flask's MultiDict does, for repeated names."""

    def __init__(self, pairs):
        super().__init__()
        self._pairs = pairs
        for name, value in pairs:
            self.setdefault(name, value)

    def getall(self, name):
        return [value for key, value in self._pairs if key == name]


def signatures(doc):
    results = []
    for case in doc["cases"]:
        validator = RequestValidator(case["token"])
        params = MultiParams([tuple(p) for p in case["params"]])
        result = {"signature": validator.compute_signature(case["url"], params)}
        if "signature" in case:
            url = case.get("validate_url", case["url"])
            result["valid"] = validator.validate(url, params, case["signature"])
        else:
            result["valid"] = None
        results.append(result)
    return {"results": results}


def shared_key(doc):
    results = []
    for case in doc["cases"]:
        validator = RequestValidator(case["secret"])
        params = MultiParams([tuple(p) for p in case["params"]])
        algorithm = get_signature_algorithm(case["settings"])
        try:
            signature = validator.compute_signature(case["url"], params, algorithm)
        except ValueError:
            signature = None
        valid = None
        if "signature" in case:
            valid = validator.validate(case["url"], params, case["signature"], algorithm)
        results.append({"algorithm": algorithm, "signature": signature, "valid": valid})
    return {"results": results}


def tree(element):
    return {
        "tag": element.tag,
        "attrs": dict(sorted(element.attrib.items())),
        "children": [tree(child) for child in element],
    }


def twiml(doc):
    ours = ET.fromstring(doc["ours"].encode("utf-8"))
    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=doc["stream_url"])
    for name, value in doc["params"]:
        stream.parameter(name=name, value=value)
    response.append(connect)
    theirs = ET.fromstring(str(response).encode("utf-8"))
    return {"ours": tree(ours), "twilio": tree(theirs)}


def main():
    mode = sys.argv[1]
    doc = json.load(sys.stdin)
    handlers = {"signatures": signatures, "shared_key": shared_key, "twiml": twiml}
    json.dump(handlers[mode](doc), sys.stdout)


if __name__ == "__main__":
    main()
