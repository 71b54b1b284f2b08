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
    assert source == f"weights from local file {path} (all 120 backbone tensors)"
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


@pytest.mark.parametrize("other", ["resnet10t", "mobilenetv3_small_050", "text", "renamed"])
def test_weights_of_another_architecture_or_not_weights_stop_naming_the_file(tmp_path, other):
    path = tmp_path / "weights.pth"
    if other == "text":
        path.write_text("not a weights file")
    elif other == "renamed":  # resnet18's own tensors under other key names: nothing would load
        torch.save({f"encoder.{k}": v for k, v in timm.create_model("resnet18").state_dict().items()}, path)
    else:
        torch.save(timm.create_model(other, num_classes=0).state_dict(), path)
    with pytest.raises(ValueError, match=rf"model\.pretrained: {path}.*resnet18") as err:
        create_student("resnet18", pretrained=str(path))
    assert "weights_only=False" not in str(err.value)  # torch's advice to unpickle the file is not passed on
    if other == "text":
        assert "refused it: it holds objects other than tensors" in str(err.value)
