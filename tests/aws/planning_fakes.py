"""What moto lacks for the plan's pre-flight checks, answered in-process through botocore's event
system as tests/aws/fakes.py does: Service Quotas (moto knows only the vpc service's) and IAM's
policy simulator (moto has no SimulatePrincipalPolicy)."""
import json
from fnmatch import fnmatchcase

from tests.aws.fakes import answer


class FakeServiceQuotas:
    """ListServiceQuotas (ServiceCode sagemaker) from `sagemaker` {quota name: applied value},
    ListAWSDefaultServiceQuotas from `defaults` {quota name: default value}, and GetServiceQuota
    (ServiceCode ec2) from `ec2` {quota code: value}; a code not there is NoSuchResourceException."""

    def __init__(self, events, sagemaker: dict[str, float], ec2: dict[str, float] | None = None,
                 defaults: dict[str, float] | None = None):
        self.sagemaker, self.ec2, self.defaults = sagemaker, ec2 or {}, defaults or {}
        events.register("before-call.service-quotas.ListServiceQuotas", self._list)
        events.register("before-call.service-quotas.ListAWSDefaultServiceQuotas", self._list_defaults)
        events.register("before-call.service-quotas.GetServiceQuota", self._get)

    @staticmethod
    def _quota(service: str, code: str, name: str, value: float) -> dict:
        return {"ServiceCode": service, "QuotaCode": code, "QuotaName": name, "Value": value,
                "QuotaArn": f"arn:aws:servicequotas:us-east-1:123456789012:{service}/{code}", "Adjustable": True}

    def _list(self, params, **_):
        body = json.loads(params["body"])
        assert body["ServiceCode"] == "sagemaker"
        quotas = [self._quota("sagemaker", f"L-{n:08X}", name, value)
                  for n, (name, value) in enumerate(sorted(self.sagemaker.items()))]
        return answer(200, {"Quotas": quotas})

    def _list_defaults(self, params, **_):
        assert json.loads(params["body"])["ServiceCode"] == "sagemaker"
        quotas = [self._quota("sagemaker", f"L-D{n:07X}", name, value)
                  for n, (name, value) in enumerate(sorted(self.defaults.items()))]
        return answer(200, {"Quotas": quotas})

    def _get(self, params, **_):
        body = json.loads(params["body"])
        code = body["QuotaCode"]
        if body["ServiceCode"] != "ec2" or code not in self.ec2:
            return answer(400, {"Error": {"Code": "NoSuchResourceException", "Message": f"no quota {code}"}})
        return answer(200, {"Quota": self._quota("ec2", code, f"quota {code}", self.ec2[code])})


class FakePolicySimulator:
    """SimulatePrincipalPolicy: every (action, resource) pair allowed unless `deny` holds (action,
    resource pattern) pairs matching it. `calls` keeps each request's parameters."""

    def __init__(self, events, deny: list[tuple[str, str]] = ()):
        self.deny = list(deny)
        self.calls: list[dict] = []
        events.register("before-call.iam.SimulatePrincipalPolicy", self._simulate)

    def _simulate(self, params, **_):
        form = params["body"]  # the query protocol's parameters, flattened: ActionNames.member.1 ...

        def members(name: str) -> list[str]:
            found = {int(k.split(".")[2]): v for k, v in form.items() if k.startswith(f"{name}.member.") and k.count(".") == 2}
            return [found[i] for i in sorted(found)]

        actions, resources = members("ActionNames"), members("ResourceArns") or ["*"]
        self.calls.append({"PolicySourceArn": form["PolicySourceArn"], "ActionNames": actions, "ResourceArns": resources,
                           "ContextKeys": sorted(v for k, v in form.items() if k.endswith(".ContextKeyName"))})
        results = []
        for action in actions:
            per_resource = [{"EvalResourceName": resource, "EvalResourceDecision": "implicitDeny" if any(
                fnmatchcase(action, a) and fnmatchcase(resource, r) for a, r in self.deny) else "allowed"}
                for resource in resources]
            decision = "allowed" if all(r["EvalResourceDecision"] == "allowed" for r in per_resource) else "implicitDeny"
            results.append({"EvalActionName": action, "EvalResourceName": resources[0], "EvalDecision": decision,
                            "ResourceSpecificResults": per_resource})
        return answer(200, {"EvaluationResults": results, "IsTruncated": False})
