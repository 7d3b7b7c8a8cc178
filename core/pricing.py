"""The price table cost estimates are made from: on-demand prices shipped with the package
(core/data/prices.json, dated), or a file of the same shape that replaces them. A price the table
does not have is None, and every estimate built on it says "unknown" rather than guessing."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

SHIPPED_PRICES = Path(__file__).resolve().parent / "data" / "prices.json"


class LambdaPrices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_million: float = Field(ge=0)
    duration_gb_second: float = Field(ge=0)
    provisioned_gb_second: float = Field(ge=0, description="Provisioned concurrency kept, per GB-second.")
    provisioned_duration_gb_second: float = Field(ge=0, description="Duration on provisioned environments.")


class RegionPrices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sagemaker_training: dict[str, float] = Field(default_factory=dict, description="Per instance-hour.")
    sagemaker_hosting: dict[str, float] = Field(default_factory=dict, description="Per instance-hour.")
    ec2: dict[str, float] = Field(default_factory=dict, description="Per instance-hour, Linux on-demand.")
    lambda_: LambdaPrices | None = Field(default=None, alias="lambda")


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    as_of: str = Field(min_length=4, description="When these prices were taken (YYYY-MM or YYYY-MM-DD).")
    source: str = ""
    currency: str = "USD"
    regions: dict[str, RegionPrices]

    def _region(self, region: str) -> RegionPrices | None:
        return self.regions.get(region)

    def training_hour(self, region: str, instance_type: str) -> float | None:
        """A SageMaker training instance (ml.*) or an EC2 instance (no ml. prefix), per hour."""
        prices = self._region(region)
        if prices is None:
            return None
        table = prices.sagemaker_training if instance_type.startswith("ml.") else prices.ec2
        return table.get(instance_type)

    def hosting_hour(self, region: str, instance_type: str) -> float | None:
        prices = self._region(region)
        return None if prices is None else prices.sagemaker_hosting.get(instance_type)

    def lambda_prices(self, region: str) -> LambdaPrices | None:
        prices = self._region(region)
        return None if prices is None else prices.lambda_


def load_prices(path: str | Path | None = None) -> PriceTable:
    """The shipped table, or the file at `path` instead (ValueError naming what is wrong in it)."""
    source = Path(path) if path else SHIPPED_PRICES
    try:
        return PriceTable.model_validate(json.loads(source.read_text()))
    except FileNotFoundError:
        raise ValueError(f"price table {source} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"price table {source} is not JSON: {exc}") from None
    except Exception as exc:  # pydantic's ValidationError: name the field
        raise ValueError(f"price table {source} is not valid: {exc}") from None
