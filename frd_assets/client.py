"""A small client for the Dagster webserver's GraphQL API: add a dataset partition, launch, read status.

from frd_assets.client import FrdClient
client = FrdClient("127.0.0.1", 3000)
run_id = client.launch("0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10")          # the whole chain
run_id = client.launch(uuid, assets=["lora_adapter"], base_model="HuggingFaceTB/SmolLM2-360M-Instruct")
print(client.status(uuid))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import requests

ASSETS = ("seed_dataset", "generated_dataset", "validated_dataset", "lora_adapter")
# The assets of each job of the code location, for runs launched by job name (they carry no selection).
JOB_ASSETS = {"prepare_dataset": ASSETS[:3], "train_adapter": ("lora_adapter",), "seed_to_adapter": ASSETS}
PARTITIONS_DEF = "dataset_uuid"

ADD_PARTITION = """
mutation AddPartition($repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName,
                      partitionKey: $partitionKey) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on DuplicateDynamicPartitionError { partitionName }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

LAUNCH_RUN = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message }
    ... on UnauthorizedError { message }
    ... on InvalidSubsetError { message }
    ... on RunConflict { message }
  }
}
"""

PARTITION_KEYS = """
query Keys($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) { __typename ... on AssetNode { partitionKeys } }
}
"""

STATUS = """
query Status($uuid: String!, $tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}, limit: 20) {
    __typename
    ... on Runs { results { runId jobName status startTime assetSelection { path } } }
  }
  assetNodes(assetKeys: [{path: ["seed_dataset"]}, {path: ["generated_dataset"]}, {path: ["validated_dataset"]},
                         {path: ["lora_adapter"]}]) {
    assetKey { path }
    assetMaterializations(partitions: [$uuid], limit: 1) {
      runId timestamp
      metadataEntries {
        label
        ... on TextMetadataEntry { text }
        ... on IntMetadataEntry { intValue }
        ... on FloatMetadataEntry { floatValue }
        ... on JsonMetadataEntry { jsonString }
        ... on PathMetadataEntry { path }
      }
    }
  }
}
"""


def _run_assets(run: dict) -> tuple[str, ...]:
    if run.get("assetSelection"):
        return tuple(p["path"][-1] for p in run["assetSelection"])
    return JOB_ASSETS.get(run["jobName"], ASSETS)


class FrdClientError(RuntimeError):
    """The webserver is unreachable, refused, or does not know the dataset; the message says which."""


@dataclass(frozen=True)
class AssetStatus:
    asset: str
    materialized_at: float | None
    run_id: str | None
    run_status: str | None
    metadata: dict[str, Any]


class FrdClient:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3000,
        *,
        timeout: float = 30,
        location: str = "frd_assets",
        repository: str = "__repository__",
    ):
        self.url = f"http://{host}:{port}/graphql"
        self.timeout = timeout
        self.repository_selector = {"repositoryLocationName": location, "repositoryName": repository}

    def _query(self, query: str, variables: dict) -> dict:
        try:
            response = requests.post(self.url, json={"query": query, "variables": variables}, timeout=self.timeout)
        except requests.RequestException as exc:
            raise FrdClientError(
                f"cannot reach the Dagster webserver at {self.url} ({type(exc).__name__}); start it (`make dev`, "
                "or docker compose up) or pass --host/--port"
            ) from None
        if response.status_code != 200:
            raise FrdClientError(f"{self.url} answered HTTP {response.status_code}: {response.text[:300]}")
        body = response.json()
        if body.get("errors"):
            raise FrdClientError(f"{self.url} rejected the query: {body['errors'][0].get('message')}")
        return body["data"]

    def add_partition(self, uuid: str) -> bool:
        """Adds the dataset UUID as a partition; False when it already was one."""
        result = self._query(
            ADD_PARTITION,
            {"repositorySelector": self.repository_selector, "partitionsDefName": PARTITIONS_DEF, "partitionKey": uuid},
        )
        payload = result["addDynamicPartition"]
        if payload["__typename"] == "AddDynamicPartitionSuccess":
            return True
        if payload["__typename"] == "DuplicateDynamicPartitionError":
            return False
        raise FrdClientError(f"adding partition {uuid} failed: {payload.get('message', payload['__typename'])}")

    def partitions(self) -> list[str]:
        data = self._query(PARTITION_KEYS, {"assetKey": {"path": ["seed_dataset"]}})["assetNodeOrError"]
        if data["__typename"] != "AssetNode":
            raise FrdClientError(f"{self.url} serves no seed_dataset asset; is it the frd_assets code location?")
        return data["partitionKeys"]

    def launch(self, uuid: str, *, assets: Sequence[str] | None = None, base_model: str | None = None) -> str:
        """Adds the partition if missing and launches the materialization; returns the run id."""
        assets = list(assets or ASSETS)
        unknown = [a for a in assets if a not in ASSETS]
        if unknown:
            raise FrdClientError(f"unknown asset(s) {', '.join(unknown)}; choose from {', '.join(ASSETS)}")
        self.add_partition(uuid)
        run_config: dict = {}
        if base_model:
            if "lora_adapter" not in assets:
                raise FrdClientError("--base-model applies to lora_adapter; include it in --assets")
            run_config = {"ops": {"lora_adapter": {"config": {"base_model": base_model}}}}
        params = {
            "selector": {
                **self.repository_selector,
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": [a]} for a in assets],
            },
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": uuid}]},
            "runConfigData": run_config,
        }
        payload = self._query(LAUNCH_RUN, {"executionParams": params})["launchRun"]
        if payload["__typename"] != "LaunchRunSuccess":
            detail = payload.get("message") or "; ".join(e["message"] for e in payload.get("errors", []))
            raise FrdClientError(f"launching {', '.join(assets)} for {uuid} failed ({payload['__typename']}): {detail}")
        return payload["run"]["runId"]

    def status(self, uuid: str) -> list[AssetStatus]:
        """Per asset: the latest materialization of this partition, the status of its latest run, metadata."""
        if uuid not in set(self.partitions()):
            raise FrdClientError(f"dataset {uuid} is not a partition here; upload its seed or `frd launch {uuid}`")
        data = self._query(STATUS, {"uuid": uuid, "tags": [{"key": "dagster/partition", "value": uuid}]})
        runs = data["runsOrError"].get("results", [])
        out = []
        for node in sorted(data["assetNodes"], key=lambda n: ASSETS.index(n["assetKey"]["path"][-1])):
            name = node["assetKey"]["path"][-1]
            # The newest run that included this asset, whatever its outcome.
            run = next((r for r in runs if name in _run_assets(r)), None)
            mats = node["assetMaterializations"]
            meta = {}
            if mats:
                for e in mats[0]["metadataEntries"]:
                    value = next((e[k] for k in ("text", "intValue", "floatValue", "path") if k in e), None)
                    if "jsonString" in e:
                        value = json.loads(e["jsonString"])
                    meta[e["label"]] = value
            out.append(
                AssetStatus(
                    asset=name,
                    materialized_at=float(mats[0]["timestamp"]) / 1000 if mats else None,
                    run_id=run["runId"] if run else None,
                    run_status=run["status"] if run else None,
                    metadata=meta,
                )
            )
        return out
