"""What a job is: manifests, endpoint schemas, job ids and report rows.

Pure code: nothing here touches the network, Redis, Celery or any file it is
not handed as bytes.
"""
