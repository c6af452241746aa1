import pytest
import torch

from encoder.batch import IGNORE_INDEX, UnpaddedBatch, cu_seqlens_from_lengths, pad, unpad


def test_from_sequences_packs_and_restarts_positions():
    batch = UnpaddedBatch.from_sequences([[5, 6, 7], [8], [9, 10]], labels=[[1, -100, 2], [-100], [3, 4]])
    assert batch.input_ids.tolist() == [5, 6, 7, 8, 9, 10]
    assert batch.position_ids.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 6] and batch.cu_seqlens.dtype == torch.int32
    assert batch.max_seqlen == 3 and batch.lengths == [3, 1, 2]
    assert batch.sequence_index.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.first_token_index.tolist() == [0, 3, 4]
    assert batch.labels.tolist() == [1, IGNORE_INDEX, 2, IGNORE_INDEX, 3, 4]


def test_lengths_from_device_tensor_without_host_cache():
    cu = cu_seqlens_from_lengths([2, 5])
    batch = UnpaddedBatch(torch.arange(7), torch.tensor([0, 1, 0, 1, 2, 3, 4]), cu, 5)
    assert batch.lengths == [2, 5] and batch.offsets == [0, 2, 7]


def test_unpad_pad_round_trip():
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 1], [4, 1, 1, 1]])
    mask = (ids != 1).long()
    batch, info = unpad(ids, mask)
    assert batch.input_ids.tolist() == [5, 6, 7, 8, 9, 4]
    assert batch.lengths == [3, 2, 1]
    restored = pad(batch.input_ids, info, fill=1)
    assert torch.equal(restored, ids)


@pytest.mark.parametrize("build, message", [
    (lambda: UnpaddedBatch.from_sequences([]), "empty batch"),
    (lambda: UnpaddedBatch.from_sequences([[1], []]), "sequence 1 is empty"),
    (lambda: unpad(torch.zeros(0, 4, dtype=torch.long)), "empty batch"),
    (lambda: unpad(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 1, 1]])), "right padding"),
    (lambda: unpad(torch.ones(2, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [0, 0, 0]])), "row 1 has no tokens"),
    (lambda: UnpaddedBatch.from_packed(torch.arange(5), [2, 2]), "sum 4"),
])
def test_bad_batches_raise_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()
