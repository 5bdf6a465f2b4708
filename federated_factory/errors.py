"""Exception classes. Each message names the file, repo, field or option at fault."""


class FederatedFactoryError(Exception):
    """Base class of every error the project raises on purpose."""


class DataError(FederatedFactoryError, ValueError):
    """A data source cannot be read as an image-classification dataset."""


class PartitionError(FederatedFactoryError, ValueError):
    """A partitioner cannot split the dataset as asked."""


class FactoryError(FederatedFactoryError):
    """A factory (one client's published generative module) is invalid or cannot be trained/published."""


class PrivacyAuditError(FactoryError):
    """The privacy audit found too many near-copies of training images; publishing is refused."""


class ManifestError(FederatedFactoryError, ValueError):
    """A federation manifest is malformed or inconsistent with the factories it lists."""


class UnlearningError(FederatedFactoryError, ValueError):
    """An unlearning request cannot be carried out (unknown repo, last factory, ...)."""


class HubEndpointError(FederatedFactoryError):
    """The Hub-compatible endpoint cannot be started or configured."""


class ClassifierError(FederatedFactoryError, ValueError):
    """A classifier cannot be built, configured, trained, evaluated, saved or loaded as asked."""


class BaselineError(FederatedFactoryError, ValueError):
    """A baseline (centralized, FedAvg, FedProx, SCAFFOLD) cannot run with the given clients or settings."""


class DemoError(FederatedFactoryError, ValueError):
    """The demo cannot run with the given options (e.g. a dataset without a test split)."""


class PlotError(FederatedFactoryError, ValueError):
    """A chart cannot be drawn from the values given (e.g. a confusion matrix of the wrong shape)."""


class ReportError(FederatedFactoryError, ValueError):
    """A report cannot be rendered (no ``results.json`` in the folder given)."""


class PublishError(FederatedFactoryError):
    """Publishing to the Hub is refused before anything is written (token, endpoint or repo visibility)."""
