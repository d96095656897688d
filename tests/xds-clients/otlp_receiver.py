"""An OpenTelemetry metrics receiver: OTLP over gRPC, decoded by the
OpenTelemetry project's own protos (opentelemetry-proto) and grpcio.

    otlp_receiver.py --listen unix:/path.sock

Prints READY once it listens, then one JSON line (protobuf's JSON form of
ExportMetricsServiceRequest) per export it receives, and answers each with
an empty ExportMetricsServiceResponse.
"""

import argparse
import sys
from concurrent import futures

import grpc
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def Export(self, request, context):
        print(json_format.MessageToJson(request, indent=None), flush=True)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Receiver(), server)
    if server.add_insecure_port(args.listen) == 0 and not args.listen.startswith("unix:"):
        sys.exit(f"cannot listen on {args.listen}")
    server.start()
    print("READY", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
