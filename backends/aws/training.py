"""The Training service on AWS: a single job on one EC2 instance (ec2_training.py, the seed's
ec2train1.py automated) and hyperparameter tuning on SageMaker (sagemaker_tuning.py)."""
from __future__ import annotations

import hashlib
import io
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from backends.aws.account import AwsAccount
from backends.aws.ec2_training import Ec2Training
from backends.aws.iam import PipelineRoles
from backends.aws.storage import S3Storage
from backends.types import (
    EpochCallback, LogCallback, TrainingOutcome, TrainingRequest, TrialCallback, TrialProgressCallback, TuningOutcome,
    TuningRequest,
)
from core.names import PipelineNames

TRAINING_DIR = Path(__file__).resolve().parents[2] / "training"


@dataclass(frozen=True)
class Ec2Network:
    """Where an EC2 training instance is launched (None / empty: the default VPC's subnet and group)."""

    subnet_id: str | None = None
    security_group_ids: tuple[str, ...] = ()


class AwsTraining:
    def __init__(self, account: AwsAccount, names: PipelineNames, storage: S3Storage, roles: PipelineRoles,
                 poll_seconds: float = 30.0, ec2_network: Ec2Network = Ec2Network()):
        self.account, self.names, self.storage, self.roles = account, names, storage, roles
        self.poll_seconds = poll_seconds
        self.ec2_network = ec2_network

    def run_training_job(self, request: TrainingRequest, on_log: LogCallback | None = None,
                         on_epoch: EpochCallback | None = None) -> TrainingOutcome:
        account, network = self.account, self.ec2_network
        runner = Ec2Training(account.client("ec2"), account.client("ssm"), account.client("s3"), self.poll_seconds)
        return runner.run(request, instance_type=request.ec2_instance_type or request.instance_type.removeprefix("ml."),
                          instance_profile_arn=self.roles.ec2_instance_profile_arn(), code_uri=self._code_uri(),
                          region=account.region, subnet_id=network.subnet_id,
                          security_group_ids=network.security_group_ids, tags=self.names.tags,
                          on_log=on_log, on_epoch=on_epoch)

    def run_tuning_job(self, request: TuningRequest, on_trial: TrialCallback | None = None,
                       on_trial_progress: TrialProgressCallback | None = None) -> TuningOutcome:
        from backends.aws.sagemaker_tuning import SageMakerTuning  # imports the sagemaker SDK (~2 s)

        account = self.account
        tuning = SageMakerTuning(account.session, account.client("sagemaker"), account.client("s3"), self.poll_seconds)
        return tuning.run(request, role_arn=self.roles.sagemaker_role_arn(), region=account.region,
                          source_dir=str(TRAINING_DIR), code_bucket_prefix=self.names.code_uri(self.storage.default_bucket()),
                          tags=self.names.tags, name_prefix=self.names.tuning_job_prefix,
                          on_trial=on_trial, on_trial_progress=on_trial_progress)

    def _code_uri(self) -> str:
        """training/*.py as a tarball in S3, named by content so unchanged code is uploaded once."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for path in sorted(TRAINING_DIR.glob("*.py")):
                info = tar.gettarinfo(str(path), arcname=path.name)
                info.mtime = 0  # the same code, the same bytes
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        data = buffer.getvalue()
        prefix = self.names.code_uri(self.storage.default_bucket())
        uri = f"{prefix}/training-{hashlib.sha256(data).hexdigest()[:16]}.tar.gz"
        if not self.storage.exists(uri):
            with tempfile.NamedTemporaryFile(suffix=".tar.gz") as tmp:
                tmp.write(data)
                tmp.flush()
                self.storage.upload_file(tmp.name, uri)
        return uri
