"""A stock Python gRPC client against a running Tether API, with no .proto files: every
message type comes from server reflection (grpcio-reflection, v1alpha), the health check from
grpcio-health-checking. Run by tests/api.rs: python3 client.py HOST:PORT; prints one line per
step for the Rust test to compare."""
import sys

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

channel = grpc.insecure_channel(sys.argv[1])
db = ProtoReflectionDescriptorDatabase(channel)
services = set(db.get_services())
assert {"tether.v1.Tether", "grpc.health.v1.Health"} <= services, services
print("services ok")
pool = DescriptorPool(db)


def cls(name):
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def method(name):
    m = pool.FindServiceByName("tether.v1.Tether").methods_by_name[name]
    req = message_factory.GetMessageClass(m.input_type)
    resp = message_factory.GetMessageClass(m.output_type)
    f = channel.unary_unary(
        "/tether.v1.Tether/" + name,
        request_serializer=req.SerializeToString,
        response_deserializer=resp.FromString,
    )
    return req, f


health = health_pb2_grpc.HealthStub(channel)
status = health.Check(health_pb2.HealthCheckRequest(service="tether.v1.Tether"), timeout=10)
print("health", health_pb2.HealthCheckResponse.ServingStatus.Name(status.status))

Backend = cls("tether.v1.Backend")
create_req, create = method("CreateBackend")
for name, zone in [("py1", "a"), ("py2", "b"), ("py3", "a")]:
    b = Backend(name=name, address="127.0.0.1:9", labels={"app": "py", "zone": zone})
    create(create_req(backend=b), timeout=10)
print("created")

update_req, update = method("UpdateBackend")
req = update_req(backend=Backend(name="py1", weight=7.5))
req.update_mask.paths.append("weight")
updated = update(req, timeout=10)
assert updated.address == "127.0.0.1:9", updated
assert dict(updated.labels) == {"app": "py", "zone": "a"}, updated.labels
print("patched weight", updated.weight)

list_req, list_backends = method("ListBackends")
page = list_backends(list_req(filter='labels.app = "py" AND labels.zone = "a"'), timeout=10)
print("filtered", [b.name for b in page.backends])

# A bad request: every violation comes back in one google.rpc.BadRequest.
try:
    create(create_req(backend=Backend(name="bad name!", address="nowhere", weight=-1)), timeout=10)
    raise SystemExit("a bad backend was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    details = dict(e.trailing_metadata())["grpc-status-details-bin"]
    st = cls("google.rpc.Status").FromString(details)
    BadRequest = cls("google.rpc.BadRequest")
    found = [d for d in st.details if d.type_url.endswith("/google.rpc.BadRequest")]
    assert found, st
    bad = BadRequest.FromString(found[0].value)
    fields = sorted(v.field for v in bad.field_violations)
    assert all(v.description for v in bad.field_violations), bad
    print("violations", fields)

try:
    req = update_req(backend=Backend(name="py1"))
    req.update_mask.paths.append("nope")
    update(req, timeout=10)
    raise SystemExit("a bad mask was accepted")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
    print("bad mask", e.details())
