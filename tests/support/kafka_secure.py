"""The secured test broker's helpers: ACLs created through the real admin API (CreateAcls on the
harness's super-user PLAINTEXT listener), and the worker user's settings. No tests here."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest, DescribeAclsRequest

from service.kafka_acls import Acl

# Kafka's wire codes (org.apache.kafka.common.resource.ResourceType, acl.AclOperation, ...).
RESOURCE_TYPE = {"ANY": 1, "TOPIC": 2, "GROUP": 3, "CLUSTER": 4, "TRANSACTIONAL_ID": 5}
OPERATION = {"ANY": 1, "READ": 3, "WRITE": 4, "CREATE": 5, "DESCRIBE": 8, "IDEMPOTENT_WRITE": 12}
ALLOW, ANY_PERMISSION, LITERAL, ANY_PATTERN = 3, 1, 3, 1

WORKER_USER = "moldwatch"


async def create_acls(bootstrap: str, principal: str, acls: list[Acl], timeout: float = 30.0) -> None:
    """ALLOW each of ``acls`` for ``principal``; returns once the broker's authorizer lists them all."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for acl in acls:
            answer = await admin._send_request(CreateAclsRequest(
                RESOURCE_TYPE[acl.resource_type], acl.name, LITERAL, principal, "*", OPERATION[acl.operation], ALLOW))
            for code, message, *_ in answer.creation_responses:
                assert code == 0, f"CreateAcls {acl}: {for_code(code).__name__} {message}"
        deadline = time.monotonic() + timeout
        while len(await _listed(admin, principal, acls)) < len(set(acls)):  # the metadata log reaches the broker
            assert time.monotonic() < deadline, f"ACLs for {principal} not in effect after {timeout} s"
            await asyncio.sleep(0.05)
    finally:
        await admin.close()


async def _listed(admin: AIOKafkaAdminClient, principal: str, acls: list[Acl]) -> set[Acl]:
    wanted = {(a.resource_type, a.name) for a in acls}
    names = {v: k for k, v in OPERATION.items()}
    types = {v: k for k, v in RESOURCE_TYPE.items()}
    found: set[Acl] = set()
    for kind, name in wanted:
        answer: Any = await admin._send_request(DescribeAclsRequest(
            RESOURCE_TYPE[kind], name, LITERAL, principal, "*", OPERATION["ANY"], ANY_PERMISSION))
        for resource in answer.resources:
            for entry in resource[-1]:
                found.add(Acl(types[resource[0]], resource[1], names.get(entry[2], str(entry[2]))))  # type: ignore[arg-type]
    return found & set(acls)
