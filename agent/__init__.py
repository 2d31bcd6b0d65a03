"""trainctl agent: runs on the instance, standard library only, shipped as files (tasks/code.py package_agent).

Entry point: agent/trainctl_agent.py (command line: agent/cli.py). Modules, each importing only the standard
library and its siblings:
    layout       the job layout (names, instance paths, S3 keys): a copy of core/jobs.py
    spec         the spec an attempt runs from, validated (and the secret reference grammar)
    errors       the agent's errors
    host         logging, time stamps, atomic files, processes
    imds         IMDSv2
    credentials  environment or instance-profile credentials
    sigv4        Signature Version 4
    s3           the S3 client
    awsjson      the AWS JSON 1.1 client (SSM, Secrets Manager)
    secret_env   secret references resolved into the trainer's environment
    paths        names from S3 that become paths: core/paths.py's rule (its copy is in transfer_helper)
    checkpoints  restore, snapshot + upload, verify
    runner       one attempt: start, sync, heartbeat, spot watch, end (and the shutdown)
    state        the job's local state (status, poll)
    stop         stopping a job, with or without its agent
    prefetch     the checkpoint downloaded before the trainer starts
    cli          the command line
"""
