"""The MongoDB-wire test server (../shared/mongo-wire) as a container for scripts/compose-test:
listening on every interface, announcing itself as the one member `mongo:27017` of replica
set rs0 (the name compose.yaml's services connect to), and keeping its data in an SQLite
file under /data/db, so a named volume keeps it across `docker compose down` and `up`.
It is a test double, not MongoDB: no auth, no replication (see ../shared/mongo-wire/README.md)."""
import asyncio, os, signal, sys

sys.path.insert(0, "/opt/tandem-mongo-wire")  # rust_compat.py, from ../shared/mongo-wire
import rust_compat
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.wire.handshake import WireHandshakeService
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

PORT = 27017
ME = os.environ.get("MONGO_WIRE_ANNOUNCE", f"mongo:{PORT}")
DATA = os.environ.get("MONGO_WIRE_DATA", "/data/db/mongo-wire.sqlite")


def announce_replica_set() -> None:
    original = WireHandshakeService.build_hello_response

    def hello(self, **kw):
        reply = original(self, **kw)
        reply.update(setName="rs0", hosts=[ME], me=ME, primary=ME, secondary=False, setVersion=1)
        # As ../shared/mongo-wire/serve.py: no topologyVersion, so drivers poll `hello`.
        reply.pop("topologyVersion", None)
        return reply

    WireHandshakeService.build_hello_response = hello


async def serve() -> None:
    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    # One worker thread: the SQLite engine's own connections otherwise answer each other
    # "database is locked" under concurrent writes (seen as 500s from user-svc).
    server = AsyncMongoEcoProxyServer(engine=SQLiteEngine(DATA, executor_workers=1),
                                      host="0.0.0.0", port=PORT,
                                      mongodb_dialect="7.0")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"READY {ME} replicaSet=rs0 data={DATA}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    rust_compat.install()
    announce_replica_set()
    asyncio.run(serve())
