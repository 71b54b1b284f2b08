import pytest
import timm
import torch

from clcpmt.model import Student, create_student


def test_student_outputs_logits_and_unit_projections():
    student, source = create_student("resnet18", num_classes=7, proj_dim=16)
    assert source.startswith("random init")
    logits, z = student(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and z.shape == (2, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(2), atol=1e-5)


def test_local_weights_file_is_loaded_and_reported(tmp_path):
    reference = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(reference.state_dict(), path)
    student, source = create_student("resnet18", num_classes=7, pretrained=str(path))
    assert source == f"weights from local file {path}"
    assert torch.equal(student.backbone.conv1.weight, reference.conv1.weight)


def test_pretrained_errors_never_fall_back_silently(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="model.pretrained: weights file .*missing.pth does not exist"):
        create_student("resnet18", pretrained=str(tmp_path / "missing.pth"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not load ImageNet weights for resnet18.*model.pretrained=/path/to"):
        create_student("resnet18", pretrained="imagenet")
    with pytest.raises(ValueError, match="unknown timm model 'resnet-18'; close matches: resnet18"):
        create_student("resnet-18")


def test_any_timm_backbone_by_name():
    student, _ = create_student("mobilenetv3_small_050", num_classes=3)
    assert isinstance(student, Student)
    assert student(torch.randn(2, 3, 32, 32))[0].shape == (2, 3)
