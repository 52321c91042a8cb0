"""Formats before values: identifier-bearing forms of a value reduced to their non-identifying part, before
any other rule (length, characters, secrets) sees them. The SDK client applies these rules before it
sends, the pipeline again before it stores. Plain Python without dependencies.

| what | example | becomes |
|---|---|---|
| SDK version (PEP 440 or semver): the local or build part dropped | `2.4.0+g1a2b3c`, `v2.4.0-rc.1+build.7` | `2.4.0`, `2.4.0-rc.1` |
| anything else as an SDK version | `main`, `2.4` + 200 characters | `(invalid)` |
| OpenAI fine-tune | `ft:gpt-4o-mini:acme-corp:support:AbC123` | `ft:gpt-4o-mini` |
| legacy OpenAI fine-tune | `curie:ft-acme-2023-01-01-00-00-00` | `ft:curie` |
| AWS ARN of a foundation model or a system inference profile | `arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-sonnet-20240620-v1:0` | `anthropic.claude-3-5-sonnet-20240620-v1:0` |
| any other AWS ARN | `arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc` | `aws:bedrock:provisioned-model` |
| Google Cloud resource of a publisher's model | `projects/acme/locations/us-central1/publishers/google/models/gemini-2.5-pro` | `google/gemini-2.5-pro` |
| any other Google Cloud resource | `projects/acme/locations/us-central1/endpoints/1234567890` | `gcp:endpoints` |
| a model in a private namespace (Ollama tags, Hugging Face repos) | `acme-corp/support-llama:8b` | `support-llama:8b` |

A namespace is kept when it is a public publisher's (`PUBLIC_NAMESPACES`: `openai/gpt-oss-120b`,
`meta-llama/...`). URLs and IP addresses are personal data, handled by the value rules
(`values.clean_value`: `(redacted)`).
"""

from __future__ import annotations

import re

INVALID = "(invalid)"

#: Publishers whose namespace in a model id names the model's maker, not a user of it.
PUBLIC_NAMESPACES = frozenset({
    "openai", "meta-llama", "meta", "mistralai", "google", "anthropic", "microsoft", "qwen", "deepseek-ai",
    "nvidia", "ibm-granite", "cohere", "cohereforai", "tiiuae", "01-ai", "moonshotai", "x-ai", "xai",
    "amazon", "allenai", "huggingfaceh4", "bigcode", "stabilityai", "nousresearch", "library",
})

# PEP 440 (the specification's own pattern) and semver 2.0, both without their local / build segment (`+...`,
# dropped before matching, whatever it holds).
_PEP440 = re.compile(
    r"v?(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?"
    r"(?:-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*)?(?:[-_.]?dev[-_.]?[0-9]*)?", re.IGNORECASE)
_SEMVER = re.compile(
    r"v?(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)"
    r"(?:-(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*)?")
_MAX_VERSION_LENGTH = 40

_OPENAI_FINE_TUNE = re.compile(r"ft:([^:]+):.*")
_OPENAI_LEGACY_FINE_TUNE = re.compile(r"([a-z0-9.-]+):ft-.*")
_ARN = re.compile(r"arn:aws[a-z-]*:([a-z0-9-]+):[a-z0-9-]*:([0-9]*):([a-z-]+)[/:]?(.*)")
_PUBLIC_ARN_RESOURCES = {"foundation-model"}  # an account-free model id
_SYSTEM_PROFILE = re.compile(r"(?:[a-z]{2}|global|apac)\.[a-z0-9-]+\.[a-z0-9.:-]+")  # us.anthropic.claude-...
_GCP = re.compile(r"projects/[^/]+/locations/[^/]+/(?:publishers/([^/]+)/models/([^/@]+)(?:@.*)?|([a-zA-Z]+)/.*)")
_PUBLISHER_MODEL = re.compile(r"publishers/([^/]+)/models/([^/@]+)(?:@.*)?")
_NAMESPACED = re.compile(r"(.+)/([^/]+)")


def sdk_version(value: str) -> str:
    """A PEP 440 or semver version without its local / build segment, else INVALID."""
    version = value.strip().split("+", 1)[0]
    if len(version) <= _MAX_VERSION_LENGTH and (_SEMVER.fullmatch(version) or _PEP440.fullmatch(version)):
        return version[1:] if version[:1] in "vV" else version
    return INVALID


def model_id(value: str) -> str:
    """A model id without the account, project, organisation or endpoint it may carry."""
    if value.startswith("ft:"):
        match = _OPENAI_FINE_TUNE.fullmatch(value)
        return f"ft:{match.group(1)}" if match else value
    if value.startswith("arn:"):
        return _arn(value)
    if value.startswith("projects/"):
        return _gcp(value)
    if value.startswith("publishers/"):
        match = _PUBLISHER_MODEL.fullmatch(value)
        return f"{match.group(1)}/{match.group(2)}" if match else value
    if ":ft-" in value:
        match = _OPENAI_LEGACY_FINE_TUNE.fullmatch(value)
        if match:
            return f"ft:{match.group(1)}"
    if "/" in value and "://" not in value:  # a URL is personal data for the value rules, not a namespace
        match = _NAMESPACED.fullmatch(value)
        if match and match.group(1).lower() not in PUBLIC_NAMESPACES:
            return match.group(2)
    return value


def _arn(value: str) -> str:
    match = _ARN.fullmatch(value)
    if not match:
        return "aws:arn"
    service, account, resource, resource_id = match.groups()
    if resource in _PUBLIC_ARN_RESOURCES and not account:
        return resource_id
    if resource == "inference-profile" and _SYSTEM_PROFILE.fullmatch(resource_id):
        return resource_id  # a system-defined cross-region profile names the model, not the account
    return f"aws:{service}:{resource}"


def _gcp(value: str) -> str:
    match = _GCP.fullmatch(value)
    if not match:
        return "gcp:resource"
    publisher, model, collection = match.groups()
    return f"{publisher}/{model}" if publisher else f"gcp:{collection}"


#: What a field's values are normalised by, by the field's (or model reference key's) name.
NORMALIZERS = {"sdk_version": sdk_version, "model_id": model_id}


def normalize(field: str, value: str) -> str:
    normalizer = NORMALIZERS.get(field)
    return normalizer(value) if normalizer is not None else value
