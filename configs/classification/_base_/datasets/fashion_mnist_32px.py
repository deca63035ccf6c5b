# Fashion-MNIST resized from 28 to 32 px, for models of stride 16 (sides must be multiples of 16).
_base_ = './fashion_mnist.py'
train_dataloader = dict(dataset=dict(transform=dict(img_size=32)))
val_dataloader = dict(dataset=dict(transform=dict(img_size=32)))
test_dataloader = val_dataloader
