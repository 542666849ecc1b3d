"""Offline checks of the operations files, run by tests/ops.rs with the
project venv's Python (.venv/bin/python, infra/local/requirements.txt).

  ops_check.py check OUT_DIR   render infra/k8s/base and every overlay with
                               kubectl's kustomize, validate every object,
                               write each rendering as JSON to OUT_DIR
  ops_check.py sync-rules      regenerate infra/k8s/base/prometheusrule.yaml
                               from infra/prometheus/backorder-rules.yml

Validation, all from installed packages, nothing fetched:
- built-in kinds against the Kubernetes JSON schemas that kubernetes-validate
  ships, in strict mode (unknown fields are errors);
- KEDA and Prometheus Operator objects against cloudcoil's models, which are
  generated from those projects' CRD schemas: types, enums and required
  fields, plus a round trip that reports any field the model does not know;
- Strimzi KafkaTopics, for which no package ships the CRD schema: the fields
  its CRD requires or constrains (name, cluster label, partitions, replicas,
  config), checked here by hand;
- the PrometheusRule carries exactly the groups of the plain rules file.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
RULES = REPO / "infra" / "prometheus" / "backorder-rules.yml"
PROMETHEUS_RULE = K8S / "base" / "prometheusrule.yaml"
KUBECTL = Path(sys.executable).parent / "kubectl"
# The oldest Kubernetes release the manifests must work on.
KUBERNETES_VERSION = "1.29.0"

CUSTOM_MODELS = {
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus_operator.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus_operator.PrometheusRule,
}
STRIMZI_TOPIC = ("kafka.strimzi.io/v1beta2", "KafkaTopic")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
KAFKA_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class RenderError(Exception):
    pass


def render(target: Path) -> list:
    done = subprocess.run([str(KUBECTL), "kustomize", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {target} failed: {done.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def name_of(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def unknown_fields(given, known, path=""):
    """Paths present in `given` but absent from the model's dump `known`."""
    if isinstance(given, dict) and isinstance(known, dict):
        for key, value in given.items():
            if key not in known:
                yield f"{path}.{key}"
            else:
                yield from unknown_fields(value, known[key], f"{path}.{key}")
    elif isinstance(given, list) and isinstance(known, list):
        for i, (a, b) in enumerate(zip(given, known)):
            yield from unknown_fields(a, b, f"{path}[{i}]")


def check_custom(obj: dict, model) -> list:
    try:
        parsed = model.model_validate(obj)
    except Exception as error:  # pydantic's ValidationError lists every field
        return [str(error)]
    dumped = parsed.model_dump(by_alias=True, exclude_none=True, mode="json")
    return [f"unknown field {p}" for p in unknown_fields(obj, dumped)]


def check_kafka_topic(obj: dict) -> list:
    errors = []
    meta = obj.get("metadata", {})
    spec = obj.get("spec")
    if not DNS_SUBDOMAIN.match(meta.get("name", "")):
        errors.append("metadata.name must be a DNS subdomain")
    if not meta.get("labels", {}).get("strimzi.io/cluster"):
        errors.append("label strimzi.io/cluster names the Kafka cluster and is required")
    if not isinstance(spec, dict):
        return errors + ["spec is required"]
    extra = set(spec) - {"topicName", "partitions", "replicas", "config"}
    if extra:
        errors.append(f"unknown spec fields {sorted(extra)}")
    for field in ("partitions", "replicas"):
        value = spec.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(f"spec.{field} must be an integer >= 1")
    if not KAFKA_TOPIC_NAME.match(spec.get("topicName", meta.get("name", ""))):
        errors.append("spec.topicName is not a valid Kafka topic name")
    config = spec.get("config", {})
    if not isinstance(config, dict) or not all(
        isinstance(v, (str, int, float, bool)) for v in config.values()
    ):
        errors.append("spec.config must map names to scalar values")
    return errors


def check_object(obj: dict) -> list:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CUSTOM_MODELS:
        return check_custom(obj, CUSTOM_MODELS[key])
    if key == STRIMZI_TOPIC:
        return check_kafka_topic(obj)
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(p) for p in error.path)
        return [f"{where}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"no schema: {error}"]
    return []


def rule_groups_from_file() -> list:
    return yaml.safe_load(RULES.read_text())["groups"]


def check(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = [K8S / "base"] + sorted(p for p in (K8S / "overlays").iterdir() if p.is_dir())
    failures = 0
    for target in targets:
        objects = render(target)
        label = target.relative_to(K8S)
        for obj in objects:
            for error in check_object(obj):
                failures += 1
                print(f"{label}: {name_of(obj)}: {error}", file=sys.stderr)
            if obj.get("kind") == "PrometheusRule" and obj["spec"]["groups"] != rule_groups_from_file():
                failures += 1
                print(
                    f"{label}: {name_of(obj)} differs from {RULES.relative_to(REPO)}: "
                    "run `.venv/bin/python infra/tools/ops_check.py sync-rules`",
                    file=sys.stderr,
                )
        (out_dir / f"{target.name}.json").write_text(json.dumps(objects, indent=1))
        print(f"{label}: {len(objects)} objects rendered and validated")
    if failures:
        print(f"{failures} problems", file=sys.stderr)
    return 1 if failures else 0


class BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (PromQL) as literal blocks, as in the source."""


BlockDumper.add_representer(
    str,
    lambda dumper, value: dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    ),
)


def sync_rules() -> int:
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "backorder", "labels": {"role": "alert-rules"}},
        "spec": {"groups": rule_groups_from_file()},
    }
    header = (
        "# Generated from infra/prometheus/backorder-rules.yml by\n"
        "#   .venv/bin/python infra/tools/ops_check.py sync-rules\n"
        "# Edit that file, not this one (tests/ops.rs compares them).\n"
    )
    PROMETHEUS_RULE.write_text(header + yaml.dump(rule, Dumper=BlockDumper, sort_keys=False, width=100))
    return 0


def main(argv: list) -> int:
    if len(argv) == 3 and argv[1] == "check":
        try:
            return check(Path(argv[2]))
        except RenderError as error:
            print(error, file=sys.stderr)
            return 1
    if len(argv) == 2 and argv[1] == "sync-rules":
        return sync_rules()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
