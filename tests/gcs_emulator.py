"""Runs gcp-storage-emulator (PyPI) on 127.0.0.1:PORT, in memory, with preconditions.

    python tests/gcs_emulator.py PORT

The emulator ignores ``ifGenerationMatch``, which the GCS store's conditional
publish (``put_if_absent``) relies on. This launcher wraps its upload handlers
so that an upload with ``ifGenerationMatch=N`` fails with HTTP 412 unless the
object's generation is N (0: the object must not exist), as GCS does. The
emulator serves one request at a time (``http.server.HTTPServer``), so the check
and the write cannot interleave with another upload.

Run as a subprocess by the fixtures in gcs_server.py: a test can stop it.
"""

import logging
import sys
from http import HTTPStatus


def _precondition_failed(response, generation):
    response.status = HTTPStatus.PRECONDITION_FAILED
    response.json(
        {
            "error": {
                "code": 412,
                "message": "At least one of the pre-conditions you specified did not hold.",
                "errors": [
                    {"reason": "conditionNotMet", "message": "ifGenerationMatch=%s" % generation}
                ],
            }
        }
    )


def _conditional(handler, object_id_of):
    def wrapped(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        if wanted:
            from gcp_storage_emulator.exceptions import NotFound

            try:
                current = storage.get_file_obj(request.params["bucket_name"], object_id_of(request))
                generation = str(current.get("generation"))
            except NotFound:
                generation = "0"
            except Exception:
                generation = None  # e.g. a resumable upload's later chunk: no name
            if generation is not None and generation != wanted[0]:
                return _precondition_failed(response, wanted[0])
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


def _upload_name(request):
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    if isinstance(data, dict):
        return (data.get("meta") or {}).get("name") or data.get("name")
    raise KeyError("name")


def patch_preconditions():
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    wrapped = {
        objects.insert: _conditional(objects.insert, _upload_name),
        objects.xml_upload: _conditional(objects.xml_upload, lambda r: r.params["object_id"]),
    }
    for _regex, methods in server.HANDLERS:
        for method, handler in list(methods.items()):
            if handler in wrapped:
                methods[method] = wrapped[handler]


def main(port: int) -> None:
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    patch_preconditions()
    from gcp_storage_emulator.server import RequestHandler

    # headers and body leave in separate writes: without TCP_NODELAY each request
    # waits out the client's delayed ACK (~40 ms, 40 s for a thousand puts)
    RequestHandler.disable_nagle_algorithm = True
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", port, in_memory=True)
    server.run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
