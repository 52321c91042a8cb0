"""Formats before values: identifier-bearing forms of a value reduced to their non-identifying part, or
replaced by `(redacted)`, before any other rule (length, characters, secrets) sees them. The SDK client
applies these rules before it sends, the pipeline again before it stores, to every free-text field alike
(provider, model class, model id, db type, parser and output models, AgentOS interfaces and db types, a
client report's reasons); an SDK version has its own rule. Plain Python without dependencies.

| what | example | becomes |
|---|---|---|
| a raw value longer than `MAX_RAW_LENGTH` (256) characters, in any field | an ARN of 300 characters | `(invalid)` at once |
| SDK version (PEP 440 or semver): the local or build part dropped | `2.4.0+g1a2b3c`, `v2.4.0-rc.1+build.7` | `2.4.0`, `2.4.0-rc.1` |
| anything else as an SDK version | `main`, `2.4` + 200 characters | `(invalid)` |
| OpenAI fine-tune | `ft:gpt-4o-mini:acme-corp:support:AbC123` | `ft:gpt-4o-mini` |
| legacy OpenAI fine-tune | `curie:ft-acme-2023-01-01-00-00-00` | `ft:curie` |
| AWS ARN of a foundation model or a system inference profile | `arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-sonnet-20240620-v1:0` | `anthropic.claude-3-5-sonnet-20240620-v1:0` |
| any other AWS ARN | `arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abc` | `aws:bedrock:provisioned-model` |
| Google Cloud resource of a publisher's model | `projects/acme/locations/us-central1/publishers/google/models/gemini-2.5-pro` | `google/gemini-2.5-pro` |
| any other Google Cloud resource | `projects/acme/locations/us-central1/endpoints/1234567890` | `gcp:endpoints` |
| a model in a private namespace (Ollama tags, Hugging Face repos, a registry host) | `acme-corp/support-llama:8b`, `api.acme-corp.com/v1/chat` | `support-llama:8b`, `chat` |
| a model in a public publisher's namespace (`PUBLIC_NAMESPACES`) | `meta-llama/Llama-3.1-8B-Instruct` | itself |
| a URL (anything with `://`) | `http://10.0.0.7:11434`, `postgres://app:pw@db/x` | `(redacted)` |
| a local path: `/...`, `~...`, `./...`, `../...`, `file:...`, a drive (`C:/`, `C:\\`), any backslash | `/home/carol/models/x.gguf`, `C:\\Users\\carol` | `(redacted)` |
| an e-mail address or `user@host`, dotted or not | `carol@acme.com`, `carol@acme-intranet` | `(redacted)` |
| a host name: a DNS name whose last label is in `HOST_SUFFIXES`, with or without a port; `localhost` | `acme-corp.openai.azure.com`, `foo.internal:8080` | `(redacted)` |
| an IPv4 address, anywhere in the value | `10.0.0.7`, `model-192.168.1.10` | `(redacted)` |
| an IPv6 address: 8 groups or compressed by `::`, with an IPv4 tail or not | `fe80::1ff:fe23:4567:890a`, `::ffff:10.0.0.1` | `(redacted)` |
| an identifier: a UUID, or 10 digits or more in a row (an account, project or phone number) | `123e4567-e89b-12d3-a456-426614174000` | `(redacted)` |
| keys, tokens and long high-entropy strings (`values.py`, after these rules) | `sk-proj-...`, `Bearer ...`, `ghp_...` | `(redacted)` |

A reduction's result is judged again (`ft:10.0.0.7:x` -> `ft:10.0.0.7` -> `(redacted)`); what it drops is
never stored, so it is not judged. A Vertex model version (`claude-3-5-sonnet-v2@20241022`: digits after
the `@`) is not an e-mail address.

Cost is bounded by size, never by shape: a value over `MAX_RAW_LENGTH` is `(invalid)` before any rule
runs, and every rule is linear in its input (string operations, or patterns whose quantifiers cannot
overlap; `tests/test_value_rules_linear.py`).
"""  # noqa: E501 - the rules table above is Markdown, whose rows cannot wrap

from __future__ import annotations

import re

INVALID = "(invalid)"  # too long, or characters outside the allowed set
REDACTED = "(redacted)"  # looked like a secret or personal data
#: The longest raw value the rules look at (a raw ARN or Google Cloud resource name may have ~200
#: characters and still reduce to a stored value of at most 100); anything longer is INVALID at once.
MAX_RAW_LENGTH = 256

#: Publishers whose namespace in a model id names the model's maker, not a user of it.
PUBLIC_NAMESPACES = frozenset(
    {
        "openai",
        "meta-llama",
        "meta",
        "mistralai",
        "google",
        "anthropic",
        "microsoft",
        "qwen",
        "deepseek-ai",
        "nvidia",
        "ibm-granite",
        "cohere",
        "cohereforai",
        "tiiuae",
        "01-ai",
        "moonshotai",
        "x-ai",
        "xai",
        "amazon",
        "allenai",
        "huggingfaceh4",
        "bigcode",
        "stabilityai",
        "nousresearch",
        "library",
    }
)

#: The last label of a host name: common generic and country-code top-level domains, and the suffixes of
#: private networks and clusters. Cloud endpoints are `.com` names (`acme-corp.openai.azure.com`,
#: `bedrock-runtime.us-east-1.amazonaws.com`, `us-central1-aiplatform.googleapis.com`).
#:
#: A public model id is never a host name by this rule: the rule looks at the label after the last dot of
#: a run of DNS characters (`[A-Za-z0-9.-]`), and in a model id that label is a version's tail or a model's
#: name, never a whole top-level domain: `gpt-4.1` -> `1`, `claude-3.5-sonnet` -> `5-sonnet`,
#: `gemini-2.5-pro` -> `5-pro` (not `pro`), `llama3.1:8b` -> `1` (the `:` ends the run),
#: `anthropic.claude-3-5-sonnet-20240620-v1:0` -> `claude-3-5-sonnet-20240620-v1`. Words that end model
#: artifacts' file names (`gguf`, `bin`, `pt`, `onnx`, `safetensors`) or a Whisper model's (`base.en`) are
#: not in the list.
HOST_SUFFIXES = frozenset(
    {
        "com",
        "net",
        "org",
        "edu",
        "gov",
        "mil",
        "int",
        "info",
        "biz",
        "io",
        "ai",
        "co",
        "dev",
        "app",
        "cloud",
        "tech",
        "xyz",
        "site",
        "online",
        "store",
        "host",
        "network",
        "systems",
        "services",
        "solutions",
        "digital",
        "company",
        "group",
        "page",
        "link",
        "me",
        "tv",
        "cc",
        "ly",
        "gg",
        "to",
        "sh",
        "us",
        "uk",
        "eu",
        "de",
        "fr",
        "nl",
        "be",
        "ch",
        "at",
        "it",
        "es",
        "se",
        "no",
        "dk",
        "fi",
        "pl",
        "cz",
        "ie",
        "ca",
        "au",
        "nz",
        "jp",
        "cn",
        "kr",
        "in",
        "sg",
        "hk",
        "tw",
        "br",
        "mx",
        "ar",
        "za",
        "ru",
        "ua",
        "il",
        "tr",
        "ae",
        "id",
        "vn",
        "th",
        "my",
        "ph",
        "internal",
        "local",
        "localdomain",
        "localhost",
        "corp",
        "lan",
        "home",
        "intranet",
        "intra",
        "private",
        "priv",
        "svc",
        "test",
        "example",
        "invalid",
        "arpa",
        "onion",
    }
)

# PEP 440 (the specification's own pattern) and semver 2.0, both without their local / build segment (`+...`,
# dropped before matching, whatever it holds). Applied with fullmatch to at most _MAX_VERSION_LENGTH
# characters; anchored, they are linear.
_PEP440 = re.compile(
    r"v?(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*(?:[-_.]?(?:a|b|c|rc|alpha|beta|pre|preview)[-_.]?[0-9]*)?"
    r"(?:-[0-9]+|[-_.]?(?:post|rev|r)[-_.]?[0-9]*)?(?:[-_.]?dev[-_.]?[0-9]*)?",
    re.IGNORECASE,
)
_SEMVER = re.compile(
    r"v?(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)\.(?:0|[1-9][0-9]*)"
    r"(?:-(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*)?"
)
_MAX_VERSION_LENGTH = 40

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_PUBLIC_ARN_RESOURCES = {"foundation-model"}  # an account-free model id
_ARN_RESOURCE_TYPE = re.compile(r"[a-z-]+")  # match: the type of `foundation-model/...`, `endpoint:...`
_SYSTEM_PROFILE = re.compile(r"(?:[a-z]{2}|global|apac)\.[a-z0-9-]+\.[a-z0-9.:-]+")  # us.anthropic.claude-...
_LOCAL_PATH_PREFIXES = ("/", "~", "./", "../", "file:")

# Runs of the characters an address is made of (findall: each run is consumed once), then judged by
# string operations. Number runs of 7 characters or more only: a shorter one is neither an IPv4 address
# nor 10 digits, and is left after at most 6 characters tried.
_NUMBER_RUNS = re.compile(r"[0-9.]{7,}")
_IPV6_RUNS = re.compile(r"[0-9A-Fa-f:.]+")
_HOST_RUNS = re.compile(r"[A-Za-z0-9.-]+")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")  # bounded


def normalize(field: str, value: str) -> str:
    """The format rules of `field`: an SDK version's, or those of every free-text field."""
    return sdk_version(value) if field == "sdk_version" else free_text(value)


def sdk_version(value: str) -> str:
    """A PEP 440 or semver version without its local / build segment, else INVALID."""
    if len(value) > MAX_RAW_LENGTH:
        return INVALID
    version = value.strip().split("+", 1)[0]
    if len(version) <= _MAX_VERSION_LENGTH and (_SEMVER.fullmatch(version) or _PEP440.fullmatch(version)):
        return version[1:] if version[:1] in "vV" else version
    return INVALID


def free_text(value: str) -> str:
    """A free-text value without the account, project, organisation, host, address or path it may
    carry: reduced to its model (the table above), REDACTED, INVALID when too long, or itself."""
    if len(value) > MAX_RAW_LENGTH:
        return INVALID
    if (
        "://" in value
        or "\\" in value
        or value.startswith(_LOCAL_PATH_PREFIXES)
        or (value[1:3] == ":/" and value[:1].isalpha())
    ):
        return REDACTED  # a URL or a local path, whose last segment may name a user as well
    value = _model(value)
    return REDACTED if _identifies(value) else value


def _model(value: str) -> str:
    """The model a fine-tune, a cloud resource or a namespaced name refers to; else the value."""
    if value.startswith("ft:"):
        base, colon, _ = value[3:].partition(":")
        return f"ft:{base}" if colon and base else value
    if value.startswith("arn:"):
        return _arn(value)
    if value.startswith("projects/"):
        return _gcp(value)
    if value.startswith("publishers/"):
        return _publisher_model(value[len("publishers/") :]) or value
    base, legacy, _ = value.partition(":ft-")
    if legacy and base and _only(base, _LOWER + _DIGITS + ".-"):
        return f"ft:{base}"
    namespace, _, model = value.rpartition("/")
    if namespace and model and namespace.lower() not in PUBLIC_NAMESPACES:
        return model
    return value


def _only(text: str, chars: str) -> bool:
    """Whether `text` is made of `chars` only (linear: strip removes them all or stops at another)."""
    return not text.strip(chars)


def _arn(value: str) -> str:
    """`arn:aws[-cn|-us-gov]:service:region:account:type[/:]id` -> the id of a public model, else
    `aws:service:type`."""
    parts = value.split(":", 5)
    if len(parts) < 6:
        return "aws:arn"
    _, partition, service, region, account, resource = parts
    kind = _ARN_RESOURCE_TYPE.match(resource)
    if not (
        kind
        and partition.startswith("aws")
        and _only(partition, _LOWER + "-")
        and service
        and _only(service, _LOWER + _DIGITS + "-")
        and _only(region, _LOWER + _DIGITS + "-")
        and _only(account, _DIGITS)
    ):
        return "aws:arn"
    resource_type, resource_id = kind.group(), resource[kind.end() :]
    if resource_id[:1] in ("/", ":"):
        resource_id = resource_id[1:]
    if resource_type in _PUBLIC_ARN_RESOURCES and not account:
        return resource_id
    if resource_type == "inference-profile" and _SYSTEM_PROFILE.fullmatch(resource_id):
        return resource_id  # a system-defined cross-region profile names the model, not the account
    return f"aws:{service}:{resource_type}"


def _gcp(value: str) -> str:
    """`projects/P/locations/L/publishers/PUB/models/M[@V]` -> `PUB/M`; `projects/P/locations/L/C/...` ->
    `gcp:C`; else `gcp:resource`."""
    parts = value.split("/", 4)
    if len(parts) < 5 or not parts[1] or parts[2] != "locations" or not parts[3]:
        return "gcp:resource"
    rest = parts[4]
    if rest.startswith("publishers/"):
        model = _publisher_model(rest[len("publishers/") :])
        if model:
            return model
    collection, slash, _ = rest.partition("/")
    return f"gcp:{collection}" if slash and collection.isascii() and collection.isalpha() else "gcp:resource"


def _publisher_model(rest: str) -> str | None:
    """`PUB/models/M[@V]` -> `PUB/M`."""
    publisher, models, model = rest.partition("/models/")
    model = model.partition("@")[0]
    if models and publisher and model and "/" not in publisher and "/" not in model:
        return f"{publisher}/{model}"
    return None


def _identifies(value: str) -> bool:
    """Whether a value holds an e-mail address, a host name, an IP address or an identifier."""
    if "@" in value:
        version = value.partition("@")[2]
        if not (version.isascii() and version.isdigit()):
            return True  # an e-mail address or user@host; `model@20241022` is a Vertex model version
    if ("." in value or "localhost" in value.lower()) and any(map(_host, _HOST_RUNS.findall(value))):
        return True
    if any(_ipv4(run) or _long_number(run) for run in _NUMBER_RUNS.findall(value)):
        return True
    if ("::" in value or value.count(":") >= 7) and any(map(_ipv6, _IPV6_RUNS.findall(value))):
        return True
    return value.count("-") >= 4 and _UUID.search(value) is not None  # a UUID has 4 hyphens: no pattern without


def _host(run: str) -> bool:
    """A run of DNS characters that is a host name: `localhost`, or a dotted name whose last label is a
    known suffix."""
    head, dot, label = run.rstrip(".").rpartition(".")
    return (bool(dot and head) and label.lower() in HOST_SUFFIXES) or run.lower() == "localhost"


def _ipv4(run: str) -> bool:
    parts = run.split(".")
    return len(parts) == 4 and all(1 <= len(part) <= 3 and part.isdigit() for part in parts)


def _long_number(run: str) -> bool:
    """10 digits or more in a row: an account, project or phone number, not a model's date or size."""
    return any(len(part) >= 10 for part in run.split("."))


def _ipv6(run: str) -> bool:
    """A run of hex digits, colons and dots that is an IPv6 address: groups of at most 4 hex digits, 8 of
    them or compressed by `::`, the last one possibly a dotted IPv4 address (`::ffff:10.0.0.1`)."""
    groups = run.split(":")
    if "." in groups[-1]:
        if not _ipv4(groups[-1]):
            return False
        groups[-1:] = ["0", "0"]  # an IPv4 tail is two groups
    return ("::" in run or len(groups) == 8) and all(len(group) <= 4 and "." not in group for group in groups)
