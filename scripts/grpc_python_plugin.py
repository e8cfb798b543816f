"""protoc plugin: runs grpcio-tools' gRPC Python generator on the request's files.

protoc hands a plugin a CodeGeneratorRequest on stdin. grpcio-tools only offers
its generator through its bundled protoc, so we write the request's descriptors
to a descriptor set, run that protoc on it, and answer with the files it wrote.
"""

import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse()
    response.supported_features = plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = pathlib.Path(tmp, "request.binpb")
        out_dir = pathlib.Path(tmp, "out")
        out_dir.mkdir()
        files = descriptor_pb2.FileDescriptorSet(file=request.proto_file)
        descriptor_set.write_bytes(files.SerializeToString())
        args = [
            "protoc",
            f"--descriptor_set_in={descriptor_set}",
            f"--grpc_python_out={out_dir}",
            *request.file_to_generate,
        ]
        if request.parameter:
            args.insert(1, f"--grpc_python_opt={request.parameter}")
        if protoc.main(args) != 0:
            response.error = "grpc_tools.protoc failed; see its messages above"
        else:
            for path in sorted(out_dir.rglob("*.py")):
                generated = response.file.add()
                generated.name = str(path.relative_to(out_dir))
                generated.content = path.read_text()
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
