#!/usr/bin/python3
"""Moves data between S3 and a directory: the data in before training, the results out after.

  s3sync get [URI] DIR   download every object under s3://BUCKET/PREFIX into DIR, keeping the
                         keys' paths below PREFIX (URI defaults to $STORAGE_URI); files 0644,
                         directories (DIR too, when this user owns it) 0755, so that a training
                         container running as another user reads what a root initializer wrote
  s3sync put DIR URI     upload every file under DIR to s3://BUCKET/PREFIX/<its path below DIR>

PREFIX names a "directory": s3://b/data takes data/x and data itself, never data2/x. An object
whose key ends in "/" (a folder marker) is skipped.

The server and credentials come from the environment: the Kubeflow Trainer initializers' names
first (ENDPOINT, ACCESS_KEY_ID, SECRET_ACCESS_KEY, REGION), else the AWS SDKs' (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION); without keys, requests go unsigned (a
public bucket). Requests use path-style addressing (http://ENDPOINT/BUCKET/KEY), which every
S3-compatible server understands.

On success, one line on stdout:
  s3sync: downloaded N objects (B bytes) from s3://BUCKET/PREFIX into DIR in T s
  s3sync: uploaded N files (B bytes) from DIR to s3://BUCKET/PREFIX in T s
On failure, the last line on stderr says what to fix (also written to /dev/termination-log, which
Kubernetes shows as the container's termination message), and the exit code says which failure:
  2 usage, or a storage URI that is not s3://BUCKET[/PREFIX]
  3 the bucket does not exist
  4 the server refused the credentials (InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied)
  5 nothing to transfer: no object under the prefix, or no file under DIR
  6 the server cannot be reached
  7 another error from the server
  8 a local file or directory cannot be read or written
Neither key is ever printed: every message passes through redact().
"""
import os
import sys
import tempfile
import time

USAGE = "usage: s3sync get [s3://BUCKET/PREFIX] DIR | s3sync put DIR s3://BUCKET/PREFIX"

EXIT_USAGE, EXIT_NO_BUCKET, EXIT_CREDENTIALS, EXIT_EMPTY, EXIT_UNREACHABLE, EXIT_S3, EXIT_LOCAL = \
    2, 3, 4, 5, 6, 7, 8

# XAdminUserNotFound: versitygw without an IAM store answers an unknown access key so.
CREDENTIAL_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied",
                     "InvalidToken", "ExpiredToken", "InvalidSecurity", "XAdminUserNotFound"}
NO_BUCKET_ERRORS = {"NoSuchBucket"}


def env(*names):
    """The first of the variables that is set and not empty."""
    for name in names:
        value = os.environ.get(name, "")
        if value:
            return value
    return None


class Settings:
    def __init__(self):
        self.endpoint = env("ENDPOINT", "AWS_ENDPOINT_URL")
        self.access_key = env("ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
        self.secret_key = env("SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
        self.region = env("REGION", "AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1"

    def where(self):
        return self.endpoint or f"the AWS S3 endpoint of region {self.region}"


SETTINGS = None


def redact(text):
    """text without either key (in case a library puts one in a message)."""
    text = str(text)
    for secret in (SETTINGS and SETTINGS.secret_key, SETTINGS and SETTINGS.access_key):
        if secret:
            text = text.replace(secret, "***")
    return text


class Failure(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def parse_uri(uri):
    """(bucket, prefix without surrounding slashes) of s3://BUCKET[/PREFIX]."""
    if not uri or not uri.startswith("s3://") or not uri[len("s3://"):].split("/", 1)[0]:
        raise Failure(EXIT_USAGE, f"storageUri must be s3://BUCKET/PREFIX, got {uri!r}")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    return bucket, prefix.strip("/")


def client(settings):
    # Imported here: a usage error needs no boto3, and its import takes a while.
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    config = Config(
        s3={"addressing_style": "path"},
        connect_timeout=10,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        signature_version=None if settings.access_key else UNSIGNED,
    )
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        region_name=settings.region,
    )
    return session.client("s3", endpoint_url=settings.endpoint, config=config)


def explain(exc, settings, bucket):
    """The Failure for an exception of boto3/botocore."""
    from botocore.exceptions import (BotoCoreError, ClientError, ConnectTimeoutError,
                                     EndpointConnectionError, NoCredentialsError,
                                     ReadTimeoutError)
    from boto3.exceptions import S3UploadFailedError
    where = settings.where()
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, ClientError):
        exc = exc.__context__
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in NO_BUCKET_ERRORS:
            return Failure(EXIT_NO_BUCKET, f'bucket "{bucket}" does not exist at {where}: '
                                           "create it or fix the storageUri")
        if code in CREDENTIAL_ERRORS or status == 403:
            return Failure(EXIT_CREDENTIALS,
                           f'the S3 server at {where} refused the credentials for bucket '
                           f'"{bucket}" ({code or status}): check ACCESS_KEY_ID and '
                           "SECRET_ACCESS_KEY in the credentials Secret")
        message = error.get("Message") or exc
        return Failure(EXIT_S3, f'the S3 server at {where} answered {code or status} for bucket '
                                f'"{bucket}": {redact(message)}')
    if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError)):
        return Failure(EXIT_UNREACHABLE,
                       f"cannot reach the S3 server at {where} ({redact(exc)}): check ENDPOINT "
                       "(or AWS_ENDPOINT_URL) and that the server is up and reachable from the pod")
    if isinstance(exc, NoCredentialsError):
        return Failure(EXIT_CREDENTIALS, "no S3 credentials: set ACCESS_KEY_ID and "
                                         "SECRET_ACCESS_KEY (e.g. from the credentials Secret)")
    if isinstance(exc, BotoCoreError):
        return Failure(EXIT_S3, f'S3 request for bucket "{bucket}" at {where} failed: '
                                f"{type(exc).__name__}: {redact(exc)}")
    return None


def object_keys(s3, bucket, prefix):
    """(key, size) of every object under prefix, folder markers left out."""
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):
                continue
            if prefix and key != prefix and not key.startswith(prefix + "/"):
                continue  # s3://b/data must not take data2/x
            yield key, obj.get("Size", 0)


def relative(key, prefix):
    """The path below DIR for key: its part below prefix (the object's own name when the prefix
    is the object), refused when it would leave DIR."""
    rel = key[len(prefix):].lstrip("/") if prefix else key
    if not rel:
        rel = key.rsplit("/", 1)[-1]
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise Failure(EXIT_S3, f"object key {key!r} does not map to a path below the directory")
    return os.path.join(*parts)


def make_dirs(path):
    """Creates path and its missing parents, each 0755 whatever the umask."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for d in reversed(missing):
        os.mkdir(d)
        os.chmod(d, 0o755)


def get(uri, directory):
    bucket, prefix = parse_uri(uri)
    started = time.monotonic()
    s3 = client(SETTINGS)
    objects = list(object_keys(s3, bucket, prefix))
    if not objects:
        raise Failure(EXIT_EMPTY, f"no objects under s3://{bucket}/{prefix} at {SETTINGS.where()}: "
                                  "upload the data there or fix the storageUri")
    try:
        make_dirs(directory)
        if os.stat(directory).st_uid == os.geteuid():
            # A volume's root (the hostpath provisioner makes it 0750) opened to the trainer.
            os.chmod(directory, os.stat(directory).st_mode & 0o7777 | 0o755)
    except OSError as exc:
        raise Failure(EXIT_LOCAL, f"cannot create {directory}: {exc.strerror}") from exc
    total = 0
    for key, size in objects:
        path = os.path.join(directory, relative(key, prefix))
        try:
            make_dirs(os.path.dirname(path))
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".s3sync.")
            os.close(fd)
        except OSError as exc:
            raise Failure(EXIT_LOCAL, f"cannot write {path}: {exc.strerror}") from exc
        try:
            s3.download_file(bucket, key, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        total += size
    seconds = time.monotonic() - started
    print(f"s3sync: downloaded {len(objects)} objects ({total} bytes) from s3://{bucket}/{prefix} "
          f"into {directory} in {seconds:.1f} s", flush=True)


def put(directory, uri):
    bucket, prefix = parse_uri(uri)
    started = time.monotonic()
    files = []
    if os.path.isfile(directory):
        files.append((directory, os.path.basename(directory)))
    elif os.path.isdir(directory):
        def unreadable(exc):
            raise Failure(EXIT_LOCAL, f"cannot read {exc.filename}: {exc.strerror}")
        for root, dirs, names in os.walk(directory, onerror=unreadable):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    files.append((path, os.path.relpath(path, directory).replace(os.sep, "/")))
    else:
        raise Failure(EXIT_LOCAL, f"{directory} is not a file or directory")
    if not files:
        raise Failure(EXIT_EMPTY, f"no files under {directory} to upload to s3://{bucket}/{prefix}")
    s3 = client(SETTINGS)
    # One cheap request first: a missing bucket or refused credentials say so before any upload.
    s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    total = 0
    for path, rel in files:
        key = f"{prefix}/{rel}" if prefix else rel
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise Failure(EXIT_LOCAL, f"cannot read {path}: {exc.strerror}") from exc
        s3.upload_file(path, bucket, key)
        total += size
    seconds = time.monotonic() - started
    print(f"s3sync: uploaded {len(files)} files ({total} bytes) from {directory} to "
          f"s3://{bucket}/{prefix} in {seconds:.1f} s", flush=True)


def run(argv):
    if len(argv) in (2, 3) and argv[0] == "get":
        uri = argv[1] if len(argv) == 3 else os.environ.get("STORAGE_URI", "")
        if not uri:
            raise Failure(EXIT_USAGE, "no storageUri: pass s3://BUCKET/PREFIX or set STORAGE_URI")
        get(uri, argv[-1])
    elif len(argv) == 3 and argv[0] == "put":
        put(argv[1], argv[2])
    else:
        raise Failure(EXIT_USAGE, USAGE)


def bucket_of(argv):
    for arg in argv[1:] + [os.environ.get("STORAGE_URI", "")]:
        if arg.startswith("s3://"):
            return arg[len("s3://"):].split("/", 1)[0]
    return ""


def fail(failure):
    line = "s3sync: " + redact(failure)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    try:
        with open("/dev/termination-log", "w") as f:
            f.write(line + "\n")
    except OSError:
        pass  # not in a container, or no termination log: stderr said it
    return failure.code


def main(argv):
    global SETTINGS
    SETTINGS = Settings()
    try:
        run(argv)
        return 0
    except Failure as failure:
        return fail(failure)
    except Exception as exc:
        failure = explain(exc, SETTINGS, bucket_of(argv))
        if failure is None:
            if isinstance(exc, OSError):
                failure = Failure(EXIT_LOCAL, f"{exc.filename or ''}: {exc.strerror or exc}")
            else:
                failure = Failure(1, f"unexpected {type(exc).__name__}: {exc}")
        return fail(failure)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
