"""A small client for the Dagster webserver's GraphQL API: add a dataset partition, launch, read status.

from frd_assets.client import FrdClient
client = FrdClient("127.0.0.1", 3000)
run_id = client.launch("0b8e8f7e-6c8b-4b53-9a59-1c1f3c0f7d10")          # the whole chain
run_id = client.launch(uuid, assets=["lora_adapter"], base_model="HuggingFaceTB/SmolLM2-360M-Instruct")
print(client.status(uuid))

The client asks the webserver once which code location and repository hold the assets, so it works the
same against `-w workspace.yaml` (location "frd_assets"), `-m frd_assets.definitions` (location
"frd_assets.definitions") and a Helm user deployment (location "frd-assets"); `location=` and
`repository=` override what it finds. A dataset id is checked (`frd_assets.core.datasets`) before
anything is sent: an id that is not a canonical lowercase UUID never becomes a partition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import requests

from frd_assets.core.datasets import InvalidDatasetId, check_dataset_id
from frd_assets.core.names import (
    ADAPTER_EVALUATION,
    ASSETS,
    JOB_ASSETS,
    LORA_ADAPTER,
    PARTITION_TAG,
    PARTITIONS_DEF,
    SEED_DATASET,
)

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

CODE_LOCATION = """
query CodeLocation($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode { repository { name location { name } } }
  }
}
"""

# Each code location, and the error of one that failed to load: a location whose code raised on import
# serves no assets either, and only this tells that apart from a webserver that lacks the frd location.
LOCATIONS = """
query Locations {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        locationOrLoadError { __typename ... on PythonError { message errorChain { error { message } } } }
      }
    }
  }
}
"""

PERMISSIONS = """
query Permissions { permissions { permission value } }
"""
# The webserver's permission behind each mutation the client sends (dagster._core.workspace.permissions).
MUTATION_PERMISSIONS = {"addDynamicPartition": "edit_dynamic_partitions", "launchRun": "launch_pipeline_execution"}

PARTITION_KEYS = """
query Keys($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) { __typename ... on AssetNode { partitionKeys } }
}
"""

STATUS = """
query Status($uuid: String!, $tags: [ExecutionTag!], $assetKeys: [AssetKeyInput!]) {
  runsOrError(filter: {tags: $tags}, limit: 20) {
    __typename
    ... on Runs { results { runId jobName status startTime assetSelection { path } } }
  }
  assetNodes(assetKeys: $assetKeys) {
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
    """The dataset id is not one, or the webserver is unreachable, refused, or does not know the dataset;
    the message says which."""


def _dataset_id(value: str) -> str:
    """The id itself, or FrdClientError naming the value: the one error type a caller of the client catches."""
    try:
        return check_dataset_id(value)
    except InvalidDatasetId as exc:
        raise FrdClientError(str(exc)) from exc


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
        location: str | None = None,
        repository: str | None = None,
    ):
        """location, repository: the code location and repository holding the assets; found when not given."""
        self.url = f"http://{host}:{port}/graphql"
        self.timeout = timeout
        self._location, self._repository = location, repository
        self._selector: dict[str, str] | None = None

    @property
    def repository_selector(self) -> dict[str, str]:
        """Where the assets live: asked of the webserver on first use (unless both were given), then kept."""
        if self._selector is None:
            location, repository = self._location, self._repository
            if location is None or repository is None:
                data = self._query(CODE_LOCATION, {"assetKey": {"path": [ASSETS[0]]}})["assetNodeOrError"]
                if data["__typename"] != "AssetNode":
                    raise self._no_assets(data["__typename"])
                location = location or data["repository"]["location"]["name"]
                repository = repository or data["repository"]["name"]
            self._selector = {"repositoryLocationName": location, "repositoryName": repository}
        return self._selector

    def _no_assets(self, typename: str) -> FrdClientError:
        """Why the webserver serves no seed_dataset: a code location that failed to load (named, with its
        error's last line), else no frd code location at all."""
        workspace = self._query(LOCATIONS, {})["workspaceOrError"]
        for entry in workspace.get("locationEntries") or []:
            loaded = entry.get("locationOrLoadError") or {}
            if loaded.get("__typename") == "PythonError":
                # Dagster wraps the code's own exception ("Error occurred during the loading..."); the end of
                # its chain is the code's error, the line that says what to fix.
                chain = [link["error"]["message"] for link in loaded.get("errorChain") or []]
                text = chain[-1] if chain else loaded.get("message") or ""
                lines = [line for line in text.splitlines() if line.strip()]
                return FrdClientError(
                    f"code location {entry['name']!r} of {self.url} failed to load: "
                    f"{lines[-1].strip() if lines else 'no message'}; fix it (the webserver's log has the "
                    "traceback), then reload the location in the UI (Deployment) or restart the webserver"
                )
        return FrdClientError(
            f"{self.url} serves no {ASSETS[0]} asset ({typename}); is frd_assets.definitions one of its code "
            "locations?"
        )

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

    def _refusal(self, mutation: str, payload: dict, what: str) -> FrdClientError:
        """The error for a mutation the webserver did not carry out; a read-only webserver says so plainly."""
        if payload["__typename"] == "UnauthorizedError":
            permissions = {p["permission"]: p["value"] for p in self._query(PERMISSIONS, {})["permissions"]}
            if permissions.get(MUTATION_PERMISSIONS[mutation]) is False:
                return FrdClientError(
                    f"{what} refused: the Dagster webserver at {self.url} is read-only (started with --read-only, "
                    "like docker compose's `watch` service on port 3001); it shows runs but cannot add partitions "
                    "or launch them. Point --host/--port at the webserver that is not read-only."
                )
        detail = payload.get("message") or "; ".join(e["message"] for e in payload.get("errors", []))
        selector = self.repository_selector
        return FrdClientError(
            f"{what} failed ({payload['__typename']}): {detail or payload['__typename']} [code location "
            f"{selector['repositoryLocationName']!r}, repository {selector['repositoryName']!r}]"
        )

    def add_partition(self, uuid: str) -> bool:
        """Adds the dataset UUID as a partition; False when it already was one."""
        uuid = _dataset_id(uuid)
        result = self._query(
            ADD_PARTITION,
            {"repositorySelector": self.repository_selector, "partitionsDefName": PARTITIONS_DEF, "partitionKey": uuid},
        )
        payload = result["addDynamicPartition"]
        if payload["__typename"] == "AddDynamicPartitionSuccess":
            return True
        if payload["__typename"] == "DuplicateDynamicPartitionError":
            return False
        raise self._refusal("addDynamicPartition", payload, f"adding partition {uuid}")

    def partitions(self) -> list[str]:
        data = self._query(PARTITION_KEYS, {"assetKey": {"path": [SEED_DATASET]}})["assetNodeOrError"]
        if data["__typename"] != "AssetNode":
            raise self._no_assets(data["__typename"])
        return data["partitionKeys"]

    def launch(self, uuid: str, *, assets: Sequence[str] | None = None, base_model: str | None = None) -> str:
        """Adds the partition if missing and launches the materialization; returns the run id."""
        uuid = _dataset_id(uuid)
        assets = list(assets or ASSETS)
        unknown = [a for a in assets if a not in ASSETS]
        if unknown:
            raise FrdClientError(f"unknown asset(s) {', '.join(unknown)}; choose from {', '.join(ASSETS)}")
        run_config: dict = {}
        if base_model:
            if LORA_ADAPTER not in assets:
                raise FrdClientError("--base-model applies to lora_adapter; include it in --assets")
            # The evaluation compares the adapter with the base model it was trained on.
            run_config = {"ops": {a: {"config": {"base_model": base_model}}
                                  for a in (LORA_ADAPTER, ADAPTER_EVALUATION) if a in assets}}
        self.add_partition(uuid)
        params = {
            "selector": {
                **self.repository_selector,
                "jobName": "__ASSET_JOB",
                "assetSelection": [{"path": [a]} for a in assets],
            },
            "executionMetadata": {"tags": [{"key": PARTITION_TAG, "value": uuid}]},
            "runConfigData": run_config,
        }
        payload = self._query(LAUNCH_RUN, {"executionParams": params})["launchRun"]
        if payload["__typename"] != "LaunchRunSuccess":
            raise self._refusal("launchRun", payload, f"launching {', '.join(assets)} for {uuid}")
        return payload["run"]["runId"]

    def status(self, uuid: str) -> list[AssetStatus]:
        """Per asset: the latest materialization of this partition, the status of its latest run, metadata."""
        uuid = _dataset_id(uuid)
        data = self._query(STATUS, {"uuid": uuid, "tags": [{"key": PARTITION_TAG, "value": uuid}],
                                    "assetKeys": [{"path": [a]} for a in ASSETS]})
        runs = data["runsOrError"].get("results", [])
        # A dataset with a run or a materialization is known; only one with neither needs the partition list
        # (GraphQL has no lookup of one dynamic partition, and the list grows with every dataset ever uploaded).
        if not runs and not any(node["assetMaterializations"] for node in data["assetNodes"]) \
                and uuid not in set(self.partitions()):
            raise FrdClientError(f"dataset {uuid} is not a partition here; upload its seed or `frd launch {uuid}`")
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
