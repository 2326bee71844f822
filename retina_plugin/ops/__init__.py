from .focal_loss import sigmoid_focal_loss

__all__ = ["sigmoid_focal_loss"]
