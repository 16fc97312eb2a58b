"""A user-svc flavor in another language: a tandem.user.v1.UserService built only from
the stubs grpcio-tools generates from proto/. It forwards every call to a real flavor
(its --upstream) and, as its control file says, changes answers, fails or slows down,
so the edge's migration control can be tested against a v2 that really differs.

usage: flavor.py --stubs DIR --listen HOST:PORT --upstream HOST:PORT --control FILE

The control file (JSON, read again at the next call after it changes; absent means none
of it):
  {"errorRate": 0.5,            share of calls that fail,
   "errorCode": "UNAVAILABLE",  with this status (a grpc.StatusCode name; UNAVAILABLE)
   "latencyMs": 300,            added before each answer
   "mismatch": {"field": "first_name", "value": "Shadowed", "every": 2},
                                answers carry `value` in `field` for users whose id's
                                first hex digit is even (every: 2) or any (every: 1)
   "noise": "phone_number"}     answers carry a fresh random value in that field
"""
import argparse
import json
import os
import random
import sys
import threading
import time
import uuid
from concurrent import futures

parser = argparse.ArgumentParser()
parser.add_argument("--stubs", required=True)
parser.add_argument("--listen", required=True)
parser.add_argument("--upstream", required=True)
parser.add_argument("--control", required=True)
args = parser.parse_args()
sys.path.insert(0, args.stubs)

import grpc  # noqa: E402
from tandem.user.v1 import user_service_pb2_grpc  # noqa: E402


class Control:
    """The control file, checked at every call and re-read when it changed, so a change
    holds from the next call on."""

    def __init__(self, path):
        self.path, self.key, self.settings = path, None, {}
        self.lock = threading.Lock()

    def get(self):
        with self.lock:
            try:
                stat = os.stat(self.path)
                key = (stat.st_ino, stat.st_mtime_ns)
                if key != self.key:
                    with open(self.path) as f:
                        self.settings, self.key = json.load(f), key
            except (OSError, ValueError):
                self.settings, self.key = {}, None
            return self.settings


control = Control(args.control)
upstream = user_service_pb2_grpc.UserServiceStub(grpc.insecure_channel(args.upstream))


def behave(context):
    """Applies latency and errors; returns False when the call is to fail."""
    settings = control.get()
    if settings.get("latencyMs"):
        time.sleep(settings["latencyMs"] / 1000.0)
    if random.random() < settings.get("errorRate", 0):
        code = getattr(grpc.StatusCode, settings.get("errorCode", "UNAVAILABLE"))
        context.abort(code, "injected by the Python flavor")
    return settings


def reshape(user, settings):
    mismatch = settings.get("mismatch")
    if mismatch and user.user_id:
        every = mismatch.get("every", 2)
        if int(user.user_id[0], 16) % every == 0:
            setattr(user, mismatch["field"], mismatch["value"])
    if settings.get("noise"):
        setattr(user, settings["noise"], uuid.uuid4().hex)
    return user


def forward(method, request, context):
    metadata = [(k, v) for k, v in context.invocation_metadata() if k == "x-request-id"]
    remaining = context.time_remaining()
    try:
        return method(request, metadata=metadata, timeout=remaining)
    except grpc.RpcError as e:
        context.abort(e.code(), e.details() or "")


class Flavor(user_service_pb2_grpc.UserServiceServicer):
    def CreateUser(self, request, context):
        behave(context)
        return forward(upstream.CreateUser, request, context)

    def GetUser(self, request, context):
        settings = behave(context)
        reply = forward(upstream.GetUser, request, context)
        reshape(reply.user, settings)
        return reply

    def UpdateUserContact(self, request, context):
        behave(context)
        return forward(upstream.UpdateUserContact, request, context)


server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
user_service_pb2_grpc.add_UserServiceServicer_to_server(Flavor(), server)
# gRPC sets SO_REUSEPORT, so this joins the port the test reserved.
server.add_insecure_port(args.listen)
server.start()
print(f"python flavor serving on {args.listen}, forwarding to {args.upstream}", flush=True)
server.wait_for_termination()
