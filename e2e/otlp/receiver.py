"""An OTLP/HTTP receiver for the tests: decodes each export with the official generated code
(opentelemetry-proto, from PyPI), strictly: the body must parse, and encoding the parsed
message again must give the same bytes (no unknown or misplaced field). Each request is
appended to OUT as one JSON line: {"path", "ok", "error"?, "message"?}.

Usage: receiver.py OUT [--fail N]   (answer 503 to the first N requests)
Says `listening on http://127.0.0.1:PORT` on stderr.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

OUT = sys.argv[1]
FAIL = int(sys.argv[sys.argv.index("--fail") + 1]) if "--fail" in sys.argv else 0
seen = {"n": 0}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        seen["n"] += 1
        if seen["n"] <= FAIL:
            self.send_response(503)
            self.end_headers()
            return
        kind = {"/v1/metrics": ExportMetricsServiceRequest, "/v1/traces": ExportTraceServiceRequest}.get(
            self.path
        )
        record = {"path": self.path, "content_type": self.headers.get("content-type")}
        try:
            if kind is None:
                raise ValueError("unknown path")
            msg = kind.FromString(body)
            again = msg.SerializeToString(deterministic=True)
            if again != body:
                raise ValueError(f"re-encoded differently ({len(again)} bytes against {len(body)})")
            record["ok"] = True
            record["message"] = MessageToDict(msg, preserving_proto_field_name=True)
            if kind is ExportTraceServiceRequest:
                # Ids in hex, as traceparent writes them.
                record["spans"] = [
                    {
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "status_code": s.status.code,
                        "attributes": {
                            a.key: MessageToDict(a.value, preserving_proto_field_name=True)
                            for a in s.attributes
                        },
                    }
                    for rs in msg.resource_spans
                    for ss in rs.scope_spans
                    for s in ss.spans
                ]
            status = 200
        except Exception as e:  # a bad export is recorded, and refused
            record["ok"] = False
            record["error"] = str(e)
            status = 400
        with open(OUT, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.send_response(status)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening on http://127.0.0.1:{server.server_port}", file=sys.stderr, flush=True)
server.serve_forever()
