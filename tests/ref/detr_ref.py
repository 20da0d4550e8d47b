"""detr_ref.py - the reference DETR in PyTorch (our own code, written from
/work/shared/docs/reference/detr.md; semantics of facebookresearch/detr).

Module names reproduce the reference state-dict names exactly (backbone.0.body.layer2.0.conv1.weight,
transformer.decoder.norm.weight, bbox_embed.layers.2.bias, ...). torchvision is not needed: the ResNet
(torchvision layout, v1.5 bottleneck) is written here.

Contents:
    box ops                  box_cxcywh_to_xyxy, box_area, box_iou, generalized_box_iou     (spec 2.3)
    FrozenBatchNorm2d, BasicBlock, Bottleneck, ResNetBody, Backbone, Joiner                 (spec 1.2)
    PositionEmbeddingSine                                                                    (spec 1.4)
    Transformer (+ encoder/decoder layers, post- and pre-norm)                              (spec 1.5)
    MLP, DETR                                                                                (spec 1.6)
    HungarianMatcher, SetCriterion, build_weight_dict                                        (spec 2.1-2.2)
    make_optimizer, train_step, adamw_reference_step                                        (spec 3.1)
"""
import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn


# ----------------------------------------------------------------------------------------------
# Box ops (util/box_ops.py semantics: no epsilon anywhere)

def box_cxcywh_to_xyxy(x):
    cx, cy, w, h = x.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(x):
    x0, y0, x1, y1 = x.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes):
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1, boxes2):
    """Pairwise IoU [N,M] and union [N,M] of xyxy boxes [N,4] x [M,4]."""
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    lt = torch.max(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area1[:, None] + area2 - inter
    return inter / union, union


def generalized_box_iou(boxes1, boxes2):
    """Pairwise GIoU [N,M] of xyxy boxes; asserts well-formed boxes like the reference."""
    assert (boxes1[:, 2:] >= boxes1[:, :2]).all(), "degenerate boxes1 (x1 < x0 or y1 < y0)"
    assert (boxes2[:, 2:] >= boxes2[:, :2]).all(), "degenerate boxes2 (x1 < x0 or y1 < y0)"
    iou, union = box_iou(boxes1, boxes2)
    lt = torch.min(boxes1[:, None, :2], boxes2[:, :2])
    rb = torch.max(boxes1[:, None, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[:, :, 0] * wh[:, :, 1]
    return iou - (area - union) / area


# ----------------------------------------------------------------------------------------------
# Backbone (torchvision ResNet layout with FrozenBatchNorm2d)

class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, all four stored as buffers."""

    def __init__(self, n, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return torch.addcmul(shift.reshape(1, -1, 1, 1), x, scale.reshape(1, -1, 1, 1))  # x*scale + shift


def conv3x3(cin, cout, stride=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        if dilation > 1:
            # torchvision raises here too ("Dilation > 1 not supported in BasicBlock")
            raise NotImplementedError("dilation > 1 is not supported with BasicBlock (resnet18/34)")
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on conv2 (3x3)."""
    expansion = 4

    def __init__(self, cin, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = FrozenBatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = FrozenBatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = FrozenBatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


RESNET_SPECS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


class ResNetBody(nn.Module):
    """conv1 7x7 s2 p3, bn1, relu, maxpool 3x3 s2 p1, layer1..layer4 (no avgpool / fc).

    dilation=True follows torchvision's replace_stride_with_dilation=[False, False, True]:
    layer4 block 0 keeps dilation 1 but loses its stride (conv2 and downsample stride 1);
    layer4 blocks 1.. use dilation 2 (padding 2) in their 3x3 conv."""

    def __init__(self, depth, dilation=False):
        super().__init__()
        block, counts = RESNET_SPECS[depth]
        self.inplanes = 64
        self.cur_dilation = 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, counts[0], 1, False)
        self.layer2 = self._make_layer(block, 128, counts[1], 2, False)
        self.layer3 = self._make_layer(block, 256, counts[2], 2, False)
        self.layer4 = self._make_layer(block, 512, counts[3], 2, dilation)
        self.num_channels = 512 * block.expansion
        del self.inplanes, self.cur_dilation

    def _make_layer(self, block, planes, blocks, stride, dilate):
        previous_dilation = self.cur_dilation
        if dilate:
            self.cur_dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       FrozenBatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dilation=self.cur_dilation))
        return nn.Sequential(*layers)

    def forward(self, x, return_stages=False):
        stem = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        l1 = self.layer1(stem)
        l2 = self.layer2(l1)
        l3 = self.layer3(l2)
        l4 = self.layer4(l3)
        if return_stages:
            return l4, {"stem": stem, "layer1": l1, "layer2": l2, "layer3": l3, "layer4": l4}
        return l4


class Backbone(nn.Module):
    """Holds `body`; freezes everything except layer2..layer4 (spec 1.2)."""

    def __init__(self, depth, dilation=False, train_backbone=True):
        super().__init__()
        self.body = ResNetBody(depth, dilation)
        self.num_channels = self.body.num_channels
        for name, p in self.body.named_parameters():
            if not train_backbone or ("layer2" not in name and "layer3" not in name
                                      and "layer4" not in name):
                p.requires_grad_(False)

    def forward(self, images, mask, return_stages=False):
        feat, stages = self.body(images, return_stages=True)
        # nearest downsample of the padding mask to the feature size (F.interpolate default mode)
        m = F.interpolate(mask[None].float(), size=feat.shape[-2:]).to(torch.bool)[0]
        if return_stages:
            return feat, m, stages
        return feat, m


class PositionEmbeddingSine(nn.Module):
    """Sine encoding of spec 1.4, normalised by the valid extent; computed in the feature dtype."""

    def __init__(self, num_pos_feats=128, temperature=10000, normalize=True, scale=2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, mask, dtype):
        not_mask = ~mask                                   # [B,h,w]
        y_embed = not_mask.cumsum(1, dtype=dtype)
        x_embed = not_mask.cumsum(2, dtype=dtype)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=dtype)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t              # [B,h,w,F]
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # [B,2F,h,w]


class Joiner(nn.Sequential):
    """nn.Sequential(backbone, position_embedding): the reason keys start with backbone.0.body."""

    def forward(self, images, mask, return_stages=False):
        feat, m, stages = self[0](images, mask, return_stages=True)
        pos = self[1](m, feat.dtype)
        if return_stages:
            return feat, m, pos, stages
        return feat, m, pos


# ----------------------------------------------------------------------------------------------
# Transformer (models/transformer.py semantics)

def _with_pos(x, pos):
    return x if pos is None else x + pos


class TransformerEncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_ff, dropout, normalize_before):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, src, key_padding_mask, pos):
        if self.normalize_before:
            s2 = self.norm1(src)
            q = k = _with_pos(s2, pos)
            src = src + self.dropout1(self.self_attn(q, k, value=s2, key_padding_mask=key_padding_mask)[0])
            src = src + self.dropout2(self._ffn(self.norm2(src)))
            return src
        q = k = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(
            self.self_attn(q, k, value=src, key_padding_mask=key_padding_mask)[0]))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_ff, dropout, normalize_before):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_ff)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.normalize_before = normalize_before

    def _ffn(self, x):
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, tgt, memory, memory_key_padding_mask, pos, query_pos):
        if self.normalize_before:
            t2 = self.norm1(tgt)
            q = k = _with_pos(t2, query_pos)
            tgt = tgt + self.dropout1(self.self_attn(q, k, value=t2)[0])
            t2 = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.multihead_attn(
                query=_with_pos(t2, query_pos), key=_with_pos(memory, pos), value=memory,
                key_padding_mask=memory_key_padding_mask)[0])
            tgt = tgt + self.dropout3(self._ffn(self.norm3(tgt)))
            return tgt
        q = k = _with_pos(tgt, query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, value=tgt)[0]))
        tgt = self.norm2(tgt + self.dropout2(self.multihead_attn(
            query=_with_pos(tgt, query_pos), key=_with_pos(memory, pos), value=memory,
            key_padding_mask=memory_key_padding_mask)[0]))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    def __init__(self, layer, num_layers, norm=None):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, src, key_padding_mask, pos):
        out = src
        for layer in self.layers:
            out = layer(out, key_padding_mask, pos)
        if self.norm is not None:
            out = self.norm(out)
        return out


class TransformerDecoder(nn.Module):
    """Returns all intermediates [L,Q,B,D], each through the shared norm; the un-normalised output
    feeds the next layer."""

    def __init__(self, layer, num_layers, norm):
        super().__init__()
        self.layers = nn.ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])
        self.norm = norm

    def forward(self, tgt, memory, memory_key_padding_mask, pos, query_pos):
        out = tgt
        intermediate = []
        for layer in self.layers:
            out = layer(out, memory, memory_key_padding_mask, pos, query_pos)
            intermediate.append(self.norm(out))
        return torch.stack(intermediate)


class Transformer(nn.Module):
    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6,
                 dim_feedforward=2048, dropout=0.1, normalize_before=False):
        super().__init__()
        enc_layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        enc_norm = nn.LayerNorm(d_model) if normalize_before else None
        self.encoder = TransformerEncoder(enc_layer, num_encoder_layers, enc_norm)
        dec_layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, normalize_before)
        self.decoder = TransformerDecoder(dec_layer, num_decoder_layers, nn.LayerNorm(d_model))
        self.d_model = d_model
        self.nhead = nhead
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query_embed, pos_embed):
        """src [B,D,h,w], mask [B,h,w], query_embed [Q,D], pos_embed [B,D,h,w] ->
        hs [L,B,Q,D], memory [S,B,D]."""
        bs = src.shape[0]
        src = src.flatten(2).permute(2, 0, 1)              # [S,B,D]
        pos_embed = pos_embed.flatten(2).permute(2, 0, 1)  # [S,B,D]
        query_embed = query_embed.unsqueeze(1).repeat(1, bs, 1)  # [Q,B,D]
        mask = mask.flatten(1)                             # [B,S]
        tgt = torch.zeros_like(query_embed)
        memory = self.encoder(src, mask, pos_embed)
        hs = self.decoder(tgt, memory, mask, pos_embed, query_embed)  # [L,Q,B,D]
        return hs.transpose(1, 2), memory


# ----------------------------------------------------------------------------------------------
# DETR

class MLP(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        self.num_layers = num_layers
        h = [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(n, k) for n, k in zip([input_dim] + h, h + [output_dim]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < self.num_layers - 1 else layer(x)
        return x


class DETR(nn.Module):
    def __init__(self, depth=50, dilation=False, hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6,
                 dim_feedforward=2048, dropout=0.1, pre_norm=False, num_queries=100, num_classes=91,
                 aux_loss=True):
        super().__init__()
        self.backbone = Joiner(Backbone(depth, dilation), PositionEmbeddingSine(hidden_dim // 2))
        self.transformer = Transformer(hidden_dim, nheads, enc_layers, dec_layers, dim_feedforward,
                                       dropout, pre_norm)
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.input_proj = nn.Conv2d(self.backbone[0].num_channels, hidden_dim, kernel_size=1)
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.aux_loss = aux_loss

    def forward(self, images, mask, return_intermediates=False):
        """images [B,3,H,W], mask [B,H,W] bool (True = padding) -> dict of outputs."""
        feat, m, pos, stages = self.backbone(images, mask, return_stages=True)
        src = self.input_proj(feat)
        hs, memory = self.transformer(src, m, self.query_embed.weight, pos)
        outputs_class = self.class_embed(hs)               # [L,B,Q,C+1]
        outputs_coord = self.bbox_embed(hs).sigmoid()      # [L,B,Q,4]
        out = {"pred_logits": outputs_class[-1], "pred_boxes": outputs_coord[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b}
                                  for a, b in zip(outputs_class[:-1], outputs_coord[:-1])]
        if return_intermediates:
            out["intermediates"] = {"stages": stages, "mask": m, "pos": pos, "src_proj": src,
                                    "memory": memory, "hs": hs,
                                    "all_logits": outputs_class, "all_boxes": outputs_coord}
        return out


# ----------------------------------------------------------------------------------------------
# Matcher and criterion

class HungarianMatcher(nn.Module):
    def __init__(self, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0):
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def cost_matrices(self, outputs, targets):
        """Per-image cost matrices [Q, n_i] (list of length B)."""
        bs, nq = outputs["pred_logits"].shape[:2]
        out_prob = outputs["pred_logits"].flatten(0, 1).softmax(-1)   # [B*Q, C+1]
        out_bbox = outputs["pred_boxes"].flatten(0, 1)                # [B*Q, 4]
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_bbox = torch.cat([t["boxes"] for t in targets])
        cost_class = -out_prob[:, tgt_ids]
        cost_bbox = torch.cdist(out_bbox, tgt_bbox, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(out_bbox), box_cxcywh_to_xyxy(tgt_bbox))
        c = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        c = c.view(bs, nq, -1).cpu()
        sizes = [len(t["boxes"]) for t in targets]
        return [blk[i] for i, blk in enumerate(c.split(sizes, -1))]

    @torch.no_grad()
    def forward(self, outputs, targets):
        out = []
        for c in self.cost_matrices(outputs, targets):
            i, j = linear_sum_assignment(c.numpy())
            out.append((torch.as_tensor(i, dtype=torch.int64), torch.as_tensor(j, dtype=torch.int64)))
        return out


@torch.no_grad()
def accuracy_top1(output, target):
    """util/misc.py accuracy: 0 (not 100) when there are no targets, so class_error becomes 100."""
    if target.numel() == 0:
        return torch.zeros([], dtype=output.dtype)
    pred = output.argmax(-1)
    return (pred == target).to(output.dtype).sum() * (100.0 / target.numel())


class SetCriterion(nn.Module):
    def __init__(self, num_classes, matcher, weight_dict, eos_coef):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)
        self.last_indices = None   # [final, aux_0, ...] matchings of the last forward

    @staticmethod
    def _src_idx(indices):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for (src, _) in indices])
        return batch_idx, src_idx

    def loss_labels(self, outputs, targets, indices, log):
        logits = outputs["pred_logits"]                   # [B,Q,C+1]
        idx = self._src_idx(indices)
        tc_o = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
        tc = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64)
        tc[idx] = tc_o
        losses = {"loss_ce": F.cross_entropy(logits.transpose(1, 2), tc,
                                             self.empty_weight.to(logits.dtype))}
        if log:
            losses["class_error"] = 100 - accuracy_top1(logits[idx].detach(), tc_o)
        return losses

    @torch.no_grad()
    def loss_cardinality(self, outputs, targets):
        logits = outputs["pred_logits"]
        tgt_len = torch.as_tensor([len(t["labels"]) for t in targets], dtype=logits.dtype)
        card_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1).to(logits.dtype)
        return {"cardinality_error": F.l1_loss(card_pred, tgt_len)}

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        idx = self._src_idx(indices)
        src_boxes = outputs["pred_boxes"][idx]             # [M,4]
        tgt_boxes = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)], dim=0)
        loss_bbox = F.l1_loss(src_boxes, tgt_boxes, reduction="none")
        loss_giou = 1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src_boxes),
                                                       box_cxcywh_to_xyxy(tgt_boxes)))
        return {"loss_bbox": loss_bbox.sum() / num_boxes, "loss_giou": loss_giou.sum() / num_boxes}

    def _losses_for(self, outputs, targets, indices, num_boxes, log):
        losses = {}
        losses.update(self.loss_labels(outputs, targets, indices, log))
        losses.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        losses.update(self.loss_cardinality(outputs, targets))
        return losses

    def forward(self, outputs, targets):
        indices = self.matcher(outputs, targets)
        all_indices = [indices]
        # single process: the all-reduce/world-size average is the identity
        num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
        losses = self._losses_for(outputs, targets, indices, num_boxes, log=True)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            ind = self.matcher(aux, targets)
            all_indices.append(ind)
            l_dict = self._losses_for(aux, targets, ind, num_boxes, log=False)
            losses.update({k + f"_{i}": v for k, v in l_dict.items()})
        self.last_indices = all_indices
        return losses


def build_weight_dict(dec_layers, ce=1.0, bbox=5.0, giou=2.0, aux_loss=True):
    wd = {"loss_ce": ce, "loss_bbox": bbox, "loss_giou": giou}
    if aux_loss:
        for i in range(dec_layers - 1):
            wd.update({f"loss_ce_{i}": ce, f"loss_bbox_{i}": bbox, f"loss_giou_{i}": giou})
    return wd


def weighted_total(loss_dict, weight_dict):
    return sum(loss_dict[k] * weight_dict[k] for k in loss_dict if k in weight_dict)


# ----------------------------------------------------------------------------------------------
# Optimizer (main.py / engine.py semantics)

def param_groups(model, lr, lr_backbone):
    main = [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]
    bb = [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
    return [{"params": main}, {"params": bb, "lr": lr_backbone}]


def make_optimizer(model, lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4, betas=(0.9, 0.999), eps=1e-8,
                   foreach=True):
    """foreach=True is torch's multi-tensor AdamW: the same formula (adamw_reference_step), faster."""
    return torch.optim.AdamW(param_groups(model, lr, lr_backbone), lr=lr, weight_decay=weight_decay,
                             betas=betas, eps=eps, foreach=foreach)


def train_step(model, criterion, optimizer, images, mask, targets, clip_max_norm=0.1, after_backward=None,
               autocast=None):
    """One engine.py step: forward, loss, zero_grad, backward, clip, AdamW. Returns
    (loss_dict, total_loss, grad_norm_before_clip). after_backward(outputs, loss_dict, total), if given,
    runs after backward and before clipping (the gradients are then the unclipped ones).
    autocast: a factory of the context (e.g. torch.autocast) that forward and loss run in; for bf16
    (fp16 also needs a GradScaler, which this step does not do)."""
    with autocast() if autocast else contextlib.nullcontext():
        outputs = model(images, mask)
        loss_dict = criterion(outputs, targets)
        total = weighted_total(loss_dict, criterion.weight_dict)
    optimizer.zero_grad()
    total.backward()
    if after_backward is not None:
        after_backward(outputs, loss_dict, total)
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm) if clip_max_norm > 0 else None
    optimizer.step()
    return loss_dict, total, gnorm


# ---- mixed precision (torch.autocast): what the benchmarks' --amp runs need --------------------

class FloatCostMatcher(HungarianMatcher):
    """The matcher with its per-image cost matrices in float32: under autocast a cost may come out
    in the low type, which numpy (scipy's input) cannot hold. Same assignment."""

    def cost_matrices(self, outputs, targets):
        return [c.float() for c in super().cost_matrices(outputs, targets)]


def layer_norm_in_float32(model, device_type):
    """torch 1.x's CPU autocast runs layer_norm in the low type, against float32 weights, which
    fails; CUDA autocast and torch 2 run it in float32 (as detr-train does): feed it float32 there."""
    if device_type != "cpu" or int(torch.__version__.split(".")[0]) >= 2:
        return
    for mod in model.modules():
        if isinstance(mod, nn.LayerNorm):
            mod.register_forward_pre_hook(lambda _mod, inputs: (inputs[0].float(),) + inputs[1:])


@torch.no_grad()
def adamw_reference_step(param, grad, exp_avg, exp_avg_sq, step, lr, weight_decay=1e-4,
                         beta1=0.9, beta2=0.999, eps=1e-8):
    """The AdamW update torch 1.13 performs, written out (step counts from 1); updates in place:
        p  <- p * (1 - lr*wd)
        m  <- b1*m + (1-b1)*g ;  v <- b2*v + (1-b2)*g^2
        p  <- p - (lr / (1-b1^t)) * m / (sqrt(v) / sqrt(1-b2^t) + eps)"""
    param.mul_(1 - lr * weight_decay)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    denom = (exp_avg_sq.sqrt() / math.sqrt(bc2)).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bc1)


def clip_grad_norm_reference(grads, max_norm):
    """torch.nn.utils.clip_grad_norm_ (1.13): coef = max_norm / (total_norm + 1e-6), clamped to <= 1,
    always multiplied in. Returns total_norm (before clipping)."""
    total = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    coef = min(max_norm / (float(total) + 1e-6), 1.0)
    for g in grads:
        g.mul_(coef)
    return total
