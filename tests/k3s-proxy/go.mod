module daas-lb/k3s-proxy

go 1.19
