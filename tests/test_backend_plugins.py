"""A third party adds a backend through an entry point, without touching Switchyard."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from processes import ServerProcess, free_port

from switchyard import Client, FinishReason

PLUGIN = '''
"""A third-party backend that answers with its input reversed."""
from switchyard_modelserver.backends.base import Backend, BackendOptions
from switchyard_modelserver.domain import Delta, Finish, FinishReason, ModelCard, ModelState


class ReverseOptions(BackendOptions):
    model_id: str = "reverse"


class ReverseBackend(Backend):
    kind = "reverse"
    options_model = ReverseOptions

    def __init__(self, options):
        self._id = options.model_id

    def models(self):
        return [ModelCard(id=self._id, context_length=128)]

    async def load(self, report):
        for card in self.models():
            report(card, ModelState.READY, "")

    async def generate(self, request):
        text = (request.prompt or "")[::-1]
        yield Delta(text, len(text))
        yield Finish(FinishReason.STOP, len(text), len(text))
'''


def test_an_entry_point_backend_is_served(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "reverse_backend.py").write_text(PLUGIN)
    dist_info = site / "reverse_backend-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: reverse-backend\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text(
        textwrap.dedent(
            """\
            [switchyard.backends]
            reverse = reverse_backend:ReverseBackend
            """
        )
    )
    config = tmp_path / "modelserver.yaml"
    config.write_text("backend: {kind: reverse, model_id: backwards}\n")
    python_path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    server = ServerProcess(
        "plugin-modelserver",
        "switchyard_modelserver",
        config,
        free_port(),
        tmp_path,
        extra_env={"PYTHONPATH": python_path},
    )
    try:
        server.wait_serving()
        with Client(server.address) as client:
            result = client.generate("backwards", "switchyard")
            [model] = client.list_models()
        assert result.text == "drayhctiws"
        assert result.finish_reason is FinishReason.STOP
        assert (model.id, model.backend) == ("backwards", "reverse")
    finally:
        server.stop()
